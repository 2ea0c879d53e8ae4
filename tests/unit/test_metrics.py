"""The proxy's figures as Prometheus metric families (proxy.metrics), without sockets: counters and
gauges told apart, text figures as info labels, the A/B report per arm, and histogram buckets that
never understate a latency."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from common.histogram import LatencyHistogram
from proxy.metrics import LATENCY_BOUNDS, Figures, ProxyCollector


def exposition(figures: Figures) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(lambda: figures))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    types = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        types[family.name] = family.type
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    out["__types__"] = {((k, v),): 0.0 for k, v in types.items()}
    return out


def test_histogram_buckets_are_cumulative_and_never_understate() -> None:
    rng = random.Random(1)
    h = LatencyHistogram()
    true = [rng.lognormvariate(-8, 2) for _ in range(5000)]  # ~ 0.3 ms median, a long tail
    for s in true:
        h.record(s)
    got = h.cumulative(LATENCY_BOUNDS)
    assert got == sorted(got) and got[-1] <= h.total == len(true)
    for bound, count in zip(LATENCY_BOUNDS, got, strict=True):
        at_or_under = sum(s <= bound for s in true)
        # Counted under a bound only when surely under it; at most one log bucket (9%) is held back.
        assert count <= at_or_under
        assert count >= sum(s <= bound / 2 ** (1 / 8) for s in true)
    assert math.isclose(h.sum, sum(true))


def test_families_type_each_figure() -> None:
    fwd = LatencyHistogram()
    for us in (30, 70, 400, 2_000_000):
        fwd.record(us / 1e6)
    figures = Figures(
        snapshot={
            "uptime_in_seconds": 12,
            "connected_clients": 3,
            "commands_forwarded": 40,
            "upstream_status": "down",
            "upstream_address": "redis://h:1",
            "forward_latency_p99_us": 9.0,
            "hot_tier_hits": 7,
            "hot_tier_policy": "s3fifo",
            "hot_tier_bytes_used": 100,
            "prefetch_prefetch_late": 2,
            "prefetch_fallback_engine_died": 1,
        },
        histograms={"forward_latency_seconds": ("forwarding", fwd)},
    )
    out = exposition(figures)
    types = {k[0][0]: None for k in out["__types__"]}
    assert out["predis_uptime_seconds"][()] == 12 and out["predis_connected_clients"][()] == 3
    assert out["predis_commands_forwarded_total"][()] == 40
    assert out["predis_hot_tier_hits_total"][()] == 7 and out["predis_hot_tier_bytes_used"][()] == 100
    assert out["predis_prefetch_late_total"][()] == 2
    assert out["predis_prefetch_engine_fallbacks_total"][(("reason", "engine_died"),)] == 1
    assert out["predis_upstream_up"][(("address", "redis://h:1"),)] == 0.0
    (info,) = out["predis_proxy_info"]
    assert dict(info) == {"hot_tier_policy": "s3fifo", "upstream_address": "redis://h:1"}
    assert not any("p99" in name for name in out)  # (percentiles are in the histograms)
    assert "predis_ab_chi2_p" not in out  # (no experiment)
    buckets = {dict(k)["le"]: v for k, v in out["predis_forward_latency_seconds_bucket"].items()}
    assert buckets["5e-05"] == 1 and buckets["0.0005"] == 3 and buckets["2.5"] == 4 and buckets["+Inf"] == 4
    assert out["predis_forward_latency_seconds_count"][()] == 4
    assert "predis_connected_clients" in types and "predis_commands_forwarded" in types


def test_ab_report_per_arm() -> None:
    lat = LatencyHistogram()
    lat.record(0.002)
    report = {
        "arms": [
            {
                "name": "ML",
                "spec": "ml:/m",
                "gets": 10,
                "hits": 6,
                "misses": 4,
                "hit_ratio": 0.6,
                "precision": None,
                "prediction_p99_us": 3.0,
                "predictor": {
                    "model": "loaded",
                    "device": "cpu",
                    "model_reads": 9,
                    "live_recall": None,
                    "trained_recall": 0.5,
                    "gate_candidate_hit_ratio": 0.42,
                    "fallbacks": {"model_load": 0},
                },
            },
            {
                "name": "MARKOV",
                "spec": "markov",
                "gets": 20,
                "hits": 5,
                "misses": 15,
                "hit_ratio": 0.25,
                "precision": 0.5,
            },
        ],
        "chi2_p": 0.03,
        "enough_data": False,
        "winner": None,
        "comparisons": [{"arms": "ML-MARKOV", "difference": 0.35, "ci95": [0.1, 0.6], "sequential_p": 0.2}],
    }
    out = exposition(Figures(snapshot={}, ab=report, arm_latency={"ML": lat}))
    assert out["predis_arm_gets_total"] == {(("arm", "ML"),): 10, (("arm", "MARKOV"),): 20}
    assert out["predis_arm_hit_ratio"][(("arm", "MARKOV"),)] == 0.25
    assert out["predis_arm_precision"] == {(("arm", "MARKOV"),): 0.5}  # (None: no sample)
    assert out["predis_arm_model_reads_total"] == {(("arm", "ML"),): 9}
    # A model's levels are gauges (its recall, its gate's figures); one not measured yet is left out.
    assert out["predis_arm_trained_recall"] == {(("arm", "ML"),): 0.5}
    assert out["predis_arm_gate_candidate_hit_ratio"] == {(("arm", "ML"),): 0.42}
    assert "predis_arm_live_recall" not in out and "predis_arm_trained_recall_total" not in out
    assert ("predis_arm_gate_candidate_hit_ratio", "gauge") in {k[0] for k in out["__types__"]}
    assert out["predis_arm_model_fallbacks_total"] == {(("arm", "ML"), ("reason", "model_load")): 0}
    infos = {dict(k)["arm"]: dict(k) for k in out["predis_arm_info"]}
    assert infos["ML"] == {"arm": "ML", "spec": "ml:/m", "model": "loaded", "device": "cpu"}
    assert out["predis_ab_chi2_p"][()] == 0.03 and out["predis_ab_enough_data"][()] == 0
    assert out["predis_ab_winner"] == {(("arm", "ML"),): 0, (("arm", "MARKOV"),): 0}
    assert out["predis_ab_difference"][(("bound", "low"), ("comparison", "ML-MARKOV"))] == 0.1
    assert out["predis_ab_sequential_p"][(("comparison", "ML-MARKOV"),)] == 0.2
    assert out["predis_arm_prediction_latency_seconds_count"][(("arm", "ML"),)] == 1


def test_alert_families() -> None:
    from proxy.alerts import Alerts

    alerts = Alerts({"drift_max": 0.2, "hit_ratio_drop": 0.05})
    alerts.evaluate({"prefetch_drift_js": 0.5}, None)
    out = exposition(Figures(snapshot={"alerts_active": 1, "prefetch_drift_js": None}, alerts=alerts))
    assert out["predis_alert_firing"] == {(("alert", "drift_max"), ("arm", "")): 1}
    assert out["predis_alert_value"][(("alert", "drift_max"), ("arm", ""))] == 0.5
    assert out["predis_alerts_fired_total"][(("alert", "drift_max"),)] == 1
    assert out["predis_alert_threshold"][(("alert", "precision_min"),)] == 0  # (off)
    assert math.isnan(out["predis_prefetch_drift_js"][()])  # (not measured yet)
    assert "predis_alerts_active" not in out  # (in the alert families, not as a snapshot figure)
