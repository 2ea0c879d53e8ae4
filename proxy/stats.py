"""Counters and latency percentiles for the `# Predis` INFO section and PREDIS STATS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from common.histogram import LatencyHistogram


class Stats:
    """Proxy-wide figures. Plain attributes so the request path pays one add per event."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.connected_clients = 0
        self.total_connections = 0
        self.rejected_connections = 0
        self.commands_forwarded = 0
        self.commands_local = 0
        self.commands_streamed = 0  # forwarded while their large last argument still arrived
        self.protocol_errors = 0
        self.upstream_errors = 0
        self.timeouts = 0
        self.output_limit_disconnects = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_connects = 0
        self.upstream_status = "unknown"
        self.upstream_address = ""
        self.forward_latency = LatencyHistogram()
        # How late the event loop runs a timer due every LAG_EVERY seconds (everything it does
        # between two turns: a client's burst, a tier sweep, a garbage collection...), and how long
        # the garbage collector stops it (gc.callbacks): what every request and every prediction
        # waits for beyond its own work.
        self.loop_lag = LatencyHistogram()
        self.gc_pause = LatencyHistogram()
        # Later subsystems (hot tier, prefetch, A/B arms) register a callable returning their figures.
        self.sections: dict[str, Callable[[], dict[str, Any]]] = {}
        # The A/B experiment of live prefetching (proxy.prediction.LivePrefetcher), if one runs.
        self.ab: Any = None
        # With --workers: every worker's figures (proxy.workers.WorkerFigures); what clients read
        # is then the whole proxy's.
        self.peers: Any = None

    def client_figures(self) -> dict[str, Any]:
        """The figures a client reads: this process's, or with workers the whole proxy's."""
        if self.peers is None:
            return self.snapshot()
        from proxy.workers import merge_figures

        return merge_figures(self.peers.everyone(self.published()))

    def workers_json(self) -> bytes:
        """Each worker's figures (a list of one without workers), and which worker answered."""
        if self.peers is None:
            report = {"answered_by": 0, "workers": [self.snapshot()]}
        else:
            report = {"answered_by": self.peers.index, "workers": self.peers.everyone(self.published())}
        return json.dumps(report, sort_keys=True).encode()

    def snapshot(self) -> dict[str, Any]:
        lat = self.forward_latency
        figures: dict[str, Any] = {
            "uptime_in_seconds": int(self._clock() - self.started),
            "connected_clients": self.connected_clients,
            "total_connections_received": self.total_connections,
            "rejected_connections": self.rejected_connections,
            "commands_forwarded": self.commands_forwarded,
            "commands_local": self.commands_local,
            "commands_streamed": self.commands_streamed,
            "protocol_errors": self.protocol_errors,
            "upstream_errors": self.upstream_errors,
            "upstream_timeouts": self.timeouts,
            "output_limit_disconnects": self.output_limit_disconnects,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "upstream_status": self.upstream_status,
            "upstream_address": self.upstream_address,
            "upstream_connects": self.upstream_connects,
            "forward_latency_samples": lat.total,
            "forward_latency_p50_us": lat.percentile(50),
            "forward_latency_p90_us": lat.percentile(90),
            "forward_latency_p99_us": lat.percentile(99),
            "forward_latency_p999_us": lat.percentile(99.9),
            "event_loop_lag_p50_us": self.loop_lag.percentile(50),
            "event_loop_lag_p99_us": self.loop_lag.percentile(99),
            "event_loop_lag_p999_us": self.loop_lag.percentile(99.9),
            "gc_pauses": self.gc_pause.total,
            "gc_pause_p50_us": self.gc_pause.percentile(50),
            "gc_pause_p99_us": self.gc_pause.percentile(99),
        }
        for name, section in self.sections.items():
            for key, value in section().items():
                figures[f"{name}_{key}"] = value
        return figures

    def info_text(self) -> bytes:
        """The `# Predis` section, formatted like Redis's INFO (CRLF lines, key:value)."""
        lines = ["# Predis"]
        for key, value in self.client_figures().items():
            if isinstance(value, float):
                value = f"{value:.1f}"
            lines.append(f"{key}:{value}")
        return ("\r\n".join(lines) + "\r\n").encode()

    def published(self) -> dict[str, Any]:
        """What a worker of ``--workers`` writes for the others: its snapshot, and its A/B arms'
        figures (``ab_arms``) for every worker's A/B report."""
        figures = self.snapshot()
        if self.ab is not None:
            figures["ab_arms"] = self.ab.arm_figures()
        return figures

    def ab_report(self) -> dict[str, Any] | None:
        """The A/B report: with workers, over every worker's arms (their figures add up: each
        splits keys by the same seeded hash, and the one engine counts each worker's reads apart)."""
        if self.ab is None:
            return None
        if self.peers is None:
            return self.ab.ab()  # type: ignore[no-any-return]
        return self._ab_over(self.peers.everyone(self.published()))

    def _ab_over(self, workers: list[dict[str, Any]]) -> dict[str, Any]:
        from proxy.workers import merge_arms

        return self.ab.ab(merge_arms([w.get("ab_arms") for w in workers]))  # type: ignore[no-any-return]

    def scrape(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A metrics scrape's figures and A/B report: this process's, or with workers the whole
        proxy's, both from one read of every worker's last published figures (this one's too), so
        that a counter never goes back between two scrapes that different workers answered."""
        if self.peers is None:
            return self.snapshot(), self.ab_report()
        from proxy.workers import merge_figures

        workers = self.peers.published(self.published())
        return merge_figures(workers), self._ab_over(workers) if self.ab is not None else None

    def model_report(self) -> list[dict[str, Any]]:
        """Each model arm (``ml:...``): its spec and its model's figures from the engine (version,
        when loaded, swaps, the gate figures of its promotion...)."""
        report = self.ab_report() or {"arms": []}
        return [
            {"arm": arm["name"], "spec": arm.get("spec", ""), **arm.get("predictor", {})}
            for arm in report["arms"]
            if str(arm.get("spec", "")).startswith("ml:")
        ]

    def model_rollback(self) -> list[dict[str, Any]]:
        """Point each model arm's registry at its version before the current one (the arm's engine
        loads it within seconds, as it loads a promoted one); ValueError when none can be."""
        from ml.registry import ModelError, rollback

        if self.ab is None:
            raise ValueError("no live prefetching with a model arm runs")
        registries = dict.fromkeys(
            spec[3:].split("::", 1)[0] for _, spec in self.ab.arms if spec.startswith("ml:")
        )
        if not registries:
            raise ValueError("no model arm runs (ml:REGISTRY)")
        out = []
        for registry in registries:
            try:
                was, now = rollback(registry)
            except ModelError as exc:
                raise ValueError(str(exc)) from None
            out.append({"registry": registry, "from": was, "to": now})
        return out

    def ab_text(self) -> bytes:
        """The `# Predis A/B` section: per arm its figures, then the tests (``prefetch.abtest``)."""
        report = self.ab_report()
        lines = ["# Predis A/B"]
        if report is None:
            lines.append("ab_running:0")
        else:
            lines.append("ab_running:1")
            for arm in report["arms"]:
                figures = ",".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in _flat(arm)
                    if k != "name"
                )
                lines.append(f"arm_{arm['name']}:{figures}")
            for k in ("chi2_p", "enough_data", "min_gets", "winner"):
                lines.append(f"{k}:{report[k]}")
            for c in report["comparisons"]:
                ci = c["ci95"]
                lines.append(
                    f"compare_{c['arms']}:difference={c['difference']},"
                    f"ci95_low={ci[0] if ci else None},ci95_high={ci[1] if ci else None},"
                    f"sequential_p={c['sequential_p']}"
                )
        return ("\r\n".join(lines) + "\r\n").encode()

    def json_text(self) -> bytes:
        return json.dumps(self.client_figures(), sort_keys=True).encode()


def _flat(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """An arm's figures as INFO's k=v pairs: nested ones (a model arm's ``predictor``) as
    ``predictor_fallbacks_model_load=0``; text stripped of the separators INFO's readers split on."""
    out: list[tuple[str, Any]] = []
    for key, value in figures.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}_")
        elif isinstance(value, str):
            out.append((prefix + key, value.replace(",", ";").replace("\r", " ").replace("\n", " ")))
        else:
            out.append((prefix + key, value))
    return out
