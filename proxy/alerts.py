"""Alerts on what live prediction does (issue 22), evaluated from the proxy's figures (sans I/O).

``Alerts.evaluate`` takes one look at the figures (``Stats.snapshot`` and the A/B report) and
returns what started or stopped firing; the server calls it every second and logs each change.
Each rule has a threshold (0 turns it off):

* ``hit_ratio_drop`` (per arm): the arm's hit ratio over its latest window of ``window_gets`` GETs
  is under its own baseline (a moving average of its earlier windows) by more than this;
* ``prediction_p99_ms`` (per arm): the arm's p99 from a read to its prefetches' send is over this;
* ``precision_min`` (per arm): the share of the arm's prefetched entries read before eviction is
  under this (after 100 prefetch fills);
* ``drift_max``: the traffic's key-template mix has moved further than this from its reference
  (Jensen-Shannon divergence, ``prefetch.drift``);
* ``recall_drop`` (per model arm): the model's live recall@10 within 10 reads is under the one
  measured at its training by more than this (after ``window_gets`` reads);
* ``shed_share``: more than this share of the reads of the latest second were shed from
  prediction (after 1,000 reads);
* ``engine_restarts``: the prediction engine started again (on for ``hold`` seconds after each).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RULES = (
    "hit_ratio_drop",
    "prediction_p99_ms",
    "precision_min",
    "drift_max",
    "recall_drop",
    "shed_share",
    "engine_restarts",
)
BASELINE_WEIGHT = 0.2  # a window's weight in its arm's baseline (a moving average of windows)


@dataclass
class Firing:
    rule: str
    arm: str  # "" for the proxy-wide rules
    value: float
    threshold: float
    since: float

    def name(self) -> str:
        return f"{self.rule}:{self.arm}" if self.arm else self.rule


@dataclass
class _ArmWindow:
    gets: int = 0  # the arm's GETs at the window's start
    hits: int = 0
    baseline: float | None = None
    ratio: float | None = None  # the latest full window's hit ratio


@dataclass
class Alerts:
    thresholds: dict[str, float]
    window_gets: int = 1_000
    hold: float = 30.0
    clock: Callable[[], float] = time.monotonic
    firing: dict[tuple[str, str], Firing] = field(default_factory=dict)
    fired: dict[str, int] = field(default_factory=dict)  # times each rule started firing
    _arms: dict[str, _ArmWindow] = field(default_factory=dict)
    _starts: int | None = None
    _restarted: float | None = None
    _records: tuple[int, int] | None = None  # (records, shed) at the last look

    def __post_init__(self) -> None:
        unknown = set(self.thresholds) - set(RULES)
        if unknown:
            raise ValueError(f"unknown alert rule {sorted(unknown)[0]!r}")
        self.fired = {rule: 0 for rule in RULES}

    def on(self, rule: str) -> bool:
        return self.thresholds.get(rule, 0.0) > 0

    def evaluate(self, snap: dict[str, Any], ab: dict[str, Any] | None) -> tuple[list[Firing], list[Firing]]:
        """One look: the alerts that started firing, and those that stopped."""
        now = self.clock()
        breaches: dict[tuple[str, str], float] = {}
        for arm in (ab or {}).get("arms", []):
            self._arm(arm, breaches)
        t = self.thresholds
        drift = snap.get("prefetch_drift_js")
        if self.on("drift_max") and drift is not None and drift > t["drift_max"]:
            breaches[("drift_max", "")] = float(drift)
        records, shed = snap.get("prefetch_records"), snap.get("prefetch_predict_shed")
        if records is not None and shed is not None:
            if self._records is not None and records - self._records[0] >= 1_000:
                # (The engine's shed counts come in its reports, a little after the reads they
                # count: a window can take in an earlier one's, so the share is capped at all.)
                share = min(1.0, (shed - self._records[1]) / (records - self._records[0]))
                if self.on("shed_share") and share > t["shed_share"]:
                    breaches[("shed_share", "")] = share
                self._records = (records, shed)
            elif self._records is None or records < self._records[0]:
                self._records = (records, shed)
        starts = snap.get("prefetch_engine_starts")
        if starts is not None:
            if self._starts is not None and starts > self._starts:
                self._restarted = now
            self._starts = starts
            if (
                self.on("engine_restarts")
                and self._restarted is not None
                and now - self._restarted < self.hold
            ):
                breaches[("engine_restarts", "")] = float(starts)
        started, stopped = [], []
        for key, value in breaches.items():
            current = self.firing.get(key)
            if current is None:
                current = self.firing[key] = Firing(key[0], key[1], value, t.get(key[0], 0.0), now)
                self.fired[key[0]] += 1
                started.append(current)
            current.value = value
        for key in [k for k in self.firing if k not in breaches]:
            stopped.append(self.firing.pop(key))
        return started, stopped

    def _arm(self, arm: dict[str, Any], breaches: dict[tuple[str, str], float]) -> None:
        name, t = str(arm["name"]), self.thresholds
        gets, hits = int(arm.get("gets", 0)), int(arm.get("hits", 0))
        w = self._arms.get(name)
        if w is None or gets < w.gets:  # (a new arm, or its figures started again)
            w = self._arms[name] = _ArmWindow(gets, hits)
        if gets - w.gets >= self.window_gets:
            ratio = (hits - w.hits) / (gets - w.gets)
            w.baseline = ratio if w.baseline is None else w.baseline
            w.ratio = ratio
            drop = w.baseline - ratio
            if not (self.on("hit_ratio_drop") and drop > t["hit_ratio_drop"]):
                w.baseline += BASELINE_WEIGHT * (ratio - w.baseline)  # (a drop does not lower it)
            w.gets, w.hits = gets, hits
        if self.on("hit_ratio_drop") and w.baseline is not None and w.ratio is not None:
            if w.baseline - w.ratio > t["hit_ratio_drop"]:
                breaches[("hit_ratio_drop", name)] = w.baseline - w.ratio
        p99 = arm.get("prediction_p99_us")
        if self.on("prediction_p99_ms") and p99 and p99 / 1000 > t["prediction_p99_ms"]:
            breaches[("prediction_p99_ms", name)] = p99 / 1000
        precision, fills = arm.get("precision"), arm.get("prefetch_fills") or 0
        if (
            self.on("precision_min")
            and precision is not None
            and fills >= 100
            and precision < t["precision_min"]
        ):
            breaches[("precision_min", name)] = float(precision)
        model = arm.get("predictor") or {}
        live, trained = model.get("live_recall"), model.get("trained_recall")
        if (
            self.on("recall_drop")
            and live is not None
            and trained is not None
            and int(model.get("model_reads", 0)) >= self.window_gets
            and trained - live > t["recall_drop"]
        ):
            breaches[("recall_drop", name)] = trained - live

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "active": len(self.firing),
            "firing": ",".join(sorted(f.name() for f in self.firing.values())),
        }
        for rule in RULES:
            out[f"fired_{rule}"] = self.fired[rule]
        return out
