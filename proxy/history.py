"""The dashboard's history: one sample of the proxy's figures a second, the last ``keep`` of them
(sans I/O; the admin listener takes a sample every second and serves them as JSON).

A sample holds what the dashboard plots: per arm its hit ratio over the last ``span`` samples
(from the differences of its GETs and hits, so a change shows within seconds), its prefetch
precision and prediction p99; the A/B test's p-values, difference and winner; the tier's usage and
hit ratio; the drift; the models each arm runs; the alerts firing.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class History:
    def __init__(self, keep: int = 900, span: int = 10) -> None:
        self.samples: deque[dict[str, Any]] = deque(maxlen=keep)
        self.span = span
        self._counts: deque[dict[str, tuple[int, int]]] = deque(maxlen=span + 1)  # arm -> (gets, hits)

    def add(
        self, t: float, snap: dict[str, Any], ab: dict[str, Any] | None, alerts: Any = None
    ) -> dict[str, Any]:
        arms = (ab or {}).get("arms", [])
        counts = {str(a["name"]): (int(a.get("gets", 0)), int(a.get("hits", 0))) for a in arms}
        self._counts.append(counts)
        first = self._counts[0]
        sample: dict[str, Any] = {"t": round(t, 3), "arms": {}}
        for arm in arms:
            name = str(arm["name"])
            gets, hits = counts[name]
            g0, h0 = first.get(name, (0, 0))
            if gets < g0:  # (the experiment's figures started again)
                g0, h0 = 0, 0
            window = gets - g0
            model = arm.get("predictor") or {}
            sample["arms"][name] = {
                "spec": arm.get("spec", ""),
                "gets": gets,
                "hits": hits,
                "hit_ratio": round((hits - h0) / window, 4) if window else None,
                "hit_ratio_total": round(arm.get("hit_ratio", 0.0), 4),
                "precision": arm.get("precision"),
                "prediction_p99_ms": round(float(arm.get("prediction_p99_us") or 0.0) / 1000, 3),
                "model": model.get("model_version") or None,
            }
        if ab is not None:
            sample["ab"] = {
                "chi2_p": ab.get("chi2_p"),
                "enough_data": ab.get("enough_data"),
                "winner": ab.get("winner"),
                "comparisons": [
                    {
                        "arms": c["arms"],
                        "difference": c.get("difference"),
                        "ci95": c.get("ci95"),
                        "sequential_p": c.get("sequential_p"),
                    }
                    for c in ab.get("comparisons", [])
                ],
            }
        if "hot_tier_bytes_used" in snap:
            capacity = snap.get("hot_tier_bytes_capacity") or 1
            sample["tier"] = {
                "usage": round(snap["hot_tier_bytes_used"] / capacity, 4),
                "entries": snap.get("hot_tier_entries"),
                "hit_ratio": snap.get("hot_tier_hit_ratio"),
            }
        sample["drift_js"] = snap.get("prefetch_drift_js")
        sample["alerts"] = sorted(f.name() for f in alerts.firing.values()) if alerts is not None else []
        self.samples.append(sample)
        return sample

    def since(self, t: float = 0.0) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] > t]
