"""The proxy's figures as Prometheus metric families, built at scrape time (sans I/O).

Nothing here runs on the request path: the proxy keeps its plain counters (``proxy.stats``), and a
scrape reads them once, as ``PREDIS STATS`` and ``PREDIS AB`` do, and names them as Prometheus
expects. Counters end in ``_total``; latencies are histograms in seconds (from the proxy's log
buckets, ``common.histogram``); text figures (the tier's policy, an arm's spec and model) are
labels of an ``_info`` gauge of value 1.

The A/B figures start again on ``PREDIS AB RESET``, so the arms' counters fall to zero then;
Prometheus's ``rate`` and ``increase`` read that as a counter reset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from common.histogram import LatencyHistogram

PREFIX = "predis"
# Histogram bounds in seconds: from a tier hit (tens of microseconds) to a slow upstream (seconds).
LATENCY_BOUNDS = [
    25e-6,
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    100e-3,
    250e-3,
    500e-3,
    1.0,
    2.5,
    5.0,
    10.0,
]

# Of the proxy's own figures (``Stats.snapshot``) and its sections', those that go up and down;
# every other number only counts up. Percentiles are left out: the histograms carry them.
GAUGES = {
    "uptime_in_seconds": "Seconds since the proxy started.",
    "connected_clients": "Client connections open now.",
    "hot_tier_active": "1 while the hot tier serves reads (Redis's tracking is up), else 0.",
    "hot_tier_hit_ratio": "The hot tier's hits over its lookups since the start.",
    "hot_tier_bytes_used": "Bytes the hot tier holds (keys, values and per-entry overhead).",
    "hot_tier_bytes_capacity": "The hot tier's bound in bytes.",
    "hot_tier_partitions": "Partitions of the hot tier (one per A/B arm).",
    "hot_tier_entries": "Entries the hot tier holds.",
    "hot_tier_fills_in_flight": "Reads into the hot tier waiting for their reply.",
    "hot_tier_fill_admission": "The share of fills admitted when fills outrun the tier.",
    "prefetch_engine_up": "1 while the prediction engine process answers, else 0.",
    "prefetch_prefetch_rules": "Template rules the arms' models have taught the proxy.",
    "prefetch_drift_js": "Jensen-Shannon divergence of the latest window's key-template mix from the reference window's.",
    "prefetch_access_log_waiting": "Recorded reads waiting for the access log's next write.",
    "prefetch_access_log_files": "Closed access-log files in the recording directory.",
    "prefetch_access_log_bytes": "Bytes of the closed access-log files.",
    "prefetch_engine_pid": "The prediction engine's process id (with workers, the one they share).",
    "workers": "Worker processes whose figures these are (predis serve --workers).",
}
# Figures an A/B arm reports that go up and down; its other numbers count.
ARM_GAUGES = {
    "hit_ratio": "The arm's hits over its GETs since the experiment's figures started.",
    "precision": "The arm's prefetched entries read before eviction, over its prefetch fills.",
    "upstream_per_get": "Upstream reads (misses and prefetches) per GET of the arm's keys.",
}
ARM_SKIP = {"name", "spec", "prediction_p50_us", "prediction_p99_us", "predictor"}
# A model arm's own figures that are levels, not counts (the rest of its numbers count up).
MODEL_GAUGES = {
    "live_recall": "The model's recall@10 within 10 reads since it was loaded.",
    "trained_recall": "The model's recall@10 within 10 reads measured at its training.",
    "trained_top1": "The model's top-1 accuracy measured at its training.",
    "gate_candidate_hit_ratio": "The hit ratio the promotion gate measured for this model on held-out reads.",
    "gate_current_hit_ratio": "The hit ratio the gate measured, on the same reads, for the model it replaced.",
    "gate_held_out_reads": "The held-out reads the promotion gate replayed.",
}


@dataclass
class Figures:
    """What one scrape reads: the proxy's snapshot (``Stats.snapshot``), the A/B report
    (``LivePrefetcher.ab``, None without prediction), and the latency histograms by metric name
    (per arm under ``arms``)."""

    snapshot: dict[str, Any]
    ab: dict[str, Any] | None = None
    histograms: dict[str, tuple[str, LatencyHistogram]] = field(default_factory=dict)
    arm_latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    alerts: Any = None  # proxy.alerts.Alerts, when live prediction runs


# Figures whose INFO names read badly as metric names.
RENAMES = {"uptime_in_seconds": "uptime_seconds", "total_connections_received": "connections_received"}


def _name(key: str) -> str:
    key = RENAMES.get(key, key).replace("prefetch_prefetch_", "prefetch_")  # (the prefetch section's)
    return f"{PREFIX}_{key}"


def _histogram(
    name: str, doc: str, hists: Iterable[tuple[list[str], LatencyHistogram]], labels: list[str]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in hists:
        counts = hist.cumulative(LATENCY_BOUNDS)
        buckets = [(repr(b) if b < 1 else f"{b:g}", c) for b, c in zip(LATENCY_BOUNDS, counts, strict=True)]
        buckets.append(("+Inf", hist.total))
        family.add_metric(values, buckets, hist.sum)
    return family


def families(figures: Figures) -> Iterator[Metric]:
    """Every metric family of one scrape."""
    snap = figures.snapshot
    info: dict[str, str] = {}
    for key, value in snap.items():
        if key.endswith(("_p50_us", "_p90_us", "_p99_us", "_p999_us")) or key.endswith("_samples"):
            continue  # (in the histograms)
        if key == "upstream_status":
            gauge = GaugeMetricFamily(
                _name("upstream_up"), "1 while the upstream's health checks pass, else 0.", labels=["address"]
            )
            gauge.add_metric([str(snap.get("upstream_address", ""))], 1.0 if value == "up" else 0.0)
            yield gauge
            continue
        if isinstance(value, str):
            info[key] = value
            continue
        if value is None and key in GAUGES:  # (not measured yet: the drift before two windows)
            yield GaugeMetricFamily(_name(key), GAUGES[key], value=math.nan)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key.startswith(("prefetch_fallback_", "alerts_")):
            continue  # (below, by reason; the alerts by rule)
        if key in GAUGES:
            yield GaugeMetricFamily(_name(key), GAUGES[key], value=float(value))
        else:
            doc = f"The proxy's {key.replace('_', ' ')} since it started."
            yield CounterMetricFamily(_name(key), doc, value=float(value))
    reasons = {
        k[len("prefetch_fallback_") :]: v for k, v in snap.items() if k.startswith("prefetch_fallback_")
    }
    if reasons:
        fallbacks = CounterMetricFamily(
            _name("prefetch_engine_fallbacks"),
            "Times live prediction fell back (the engine dead, stalled or shed), by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(reasons.items()):
            fallbacks.add_metric([reason], float(count))
        yield fallbacks
    if info:
        family = InfoMetricFamily(
            _name("proxy"), "The proxy's text figures (upstream, tier policy and store)."
        )
        family.add_metric([], {k: v for k, v in sorted(info.items())})
        yield family
    for name, (doc, hist) in sorted(figures.histograms.items()):
        yield _histogram(_name(name), doc, [([], hist)], [])
    if figures.ab is not None:
        yield from _ab_families(figures.ab, figures.arm_latency)
    if figures.alerts is not None:
        yield from _alert_families(figures.alerts)


def _alert_families(alerts: Any) -> Iterator[Metric]:
    firing = GaugeMetricFamily(
        _name("alert_firing"),
        "1 for each alert firing now (its rule, and its arm for the per-arm rules); see the README's Alerts.",
        labels=["alert", "arm"],
    )
    value = GaugeMetricFamily(
        _name("alert_value"), "The figure that set each firing alert off.", labels=["alert", "arm"]
    )
    for f in alerts.firing.values():
        firing.add_metric([f.rule, f.arm], 1.0)
        value.add_metric([f.rule, f.arm], float(f.value))
    fired = CounterMetricFamily(
        _name("alerts_fired"), "Times each alert rule started firing.", labels=["alert"]
    )
    threshold = GaugeMetricFamily(
        _name("alert_threshold"), "Each alert rule's threshold (0: off).", labels=["alert"]
    )
    for rule, count in sorted(alerts.fired.items()):
        fired.add_metric([rule], float(count))
        threshold.add_metric([rule], float(alerts.thresholds.get(rule, 0.0)))
    yield firing
    yield value
    yield fired
    yield threshold


def _arm_family(families: dict[str, Any], kind: Any, key: str, doc: str) -> Any:
    """The per-arm family (``kind``: gauge or counter) of ``key``, made on first use."""
    family = families.get(key)
    if family is None:
        family = families[key] = kind(_name(f"arm_{key}"), doc, labels=["arm"])
    return family


def _ab_families(report: dict[str, Any], latency: dict[str, LatencyHistogram]) -> Iterator[Metric]:
    arms = report.get("arms", [])
    counters: dict[str, CounterMetricFamily] = {}
    gauges: dict[str, GaugeMetricFamily] = {}
    arm_info = InfoMetricFamily(
        _name("arm"), "Each A/B arm's predictor spec and, for a model arm, its model.", labels=["arm"]
    )
    model_fallbacks = CounterMetricFamily(
        _name("arm_model_fallbacks"),
        "Reads a model arm served by its fallback heuristic alone, by reason.",
        labels=["arm", "reason"],
    )
    for arm in arms:
        name = str(arm["name"])
        labels = {"spec": str(arm.get("spec", ""))}
        for key, value in arm.items():
            if key in ARM_SKIP or isinstance(value, bool) or value is None:
                continue
            if not isinstance(value, int | float):
                continue
            if key in ARM_GAUGES:
                _arm_family(gauges, GaugeMetricFamily, key, ARM_GAUGES[key]).add_metric([name], float(value))
            else:
                doc = f"The arm's {key.replace('_', ' ')} since the experiment started."
                _arm_family(counters, CounterMetricFamily, key, doc).add_metric([name], float(value))
        own = arm.get("predictor")
        if isinstance(own, dict):
            for key, value in own.items():
                if key == "fallbacks" and isinstance(value, dict):
                    for reason, count in sorted(value.items()):
                        model_fallbacks.add_metric([name, str(reason)], float(count))
                elif isinstance(value, str):
                    labels[key] = value
                elif key in MODEL_GAUGES and isinstance(value, int | float):
                    _arm_family(gauges, GaugeMetricFamily, key, MODEL_GAUGES[key]).add_metric(
                        [name], float(value)
                    )
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    doc = f"The arm's predictor's {key.replace('_', ' ')}."
                    _arm_family(counters, CounterMetricFamily, key, doc).add_metric([name], float(value))
        arm_info.add_metric([name], labels)
    yield arm_info
    yield from counters.values()
    yield from gauges.values()
    if model_fallbacks.samples:
        yield model_fallbacks
    if latency:
        yield _histogram(
            _name("arm_prediction_latency_seconds"),
            "From a read to the send of the prefetches predicted from it, per arm.",
            [([arm], hist) for arm, hist in latency.items()],
            ["arm"],
        )
    chi2 = report.get("chi2_p")
    yield GaugeMetricFamily(
        _name("ab_chi2_p"),
        "The chi-square test's p-value over every arm's hits and misses (NaN before any data).",
        value=float(chi2) if chi2 is not None else math.nan,
    )
    yield GaugeMetricFamily(
        _name("ab_enough_data"),
        "1 once every arm has the GETs the test needs before it names a winner.",
        value=1.0 if report.get("enough_data") else 0.0,
    )
    winner = GaugeMetricFamily(
        _name("ab_winner"), "1 for the arm the test names the winner, if any.", labels=["arm"]
    )
    for arm in arms:
        winner.add_metric([str(arm["name"])], 1.0 if arm["name"] == report.get("winner") else 0.0)
    yield winner
    difference = GaugeMetricFamily(
        _name("ab_difference"),
        "Hit ratio of the first arm minus each other one's, with its 95% interval (bound low and high).",
        labels=["comparison", "bound"],
    )
    sequential = GaugeMetricFamily(
        _name("ab_sequential_p"),
        "The always-valid (sequential) p-value of the first arm against each other one.",
        labels=["comparison"],
    )
    for c in report.get("comparisons", []):
        ci = c.get("ci95") or [None, None]
        for bound, value in (("estimate", c.get("difference")), ("low", ci[0]), ("high", ci[1])):
            difference.add_metric([c["arms"], bound], float(value) if value is not None else math.nan)
        p = c.get("sequential_p")
        sequential.add_metric([c["arms"]], float(p) if p is not None else math.nan)
    yield difference
    yield sequential


class ProxyCollector(Collector):
    """A ``prometheus_client`` collector over a callable that reads the figures at scrape time."""

    def __init__(self, read: Callable[[], Figures]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield from families(self.read())
