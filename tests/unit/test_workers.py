"""Summing the workers' figures (proxy.workers.merge_figures), without processes."""

from __future__ import annotations

import pytest

from proxy.workers import merge_figures, resolve_workers


def test_counts_add_up_and_the_rest_is_taken_whole() -> None:
    a = {
        "commands_forwarded": 10,
        "connected_clients": 2,
        "forward_latency_p99_us": 120,
        "uptime_in_seconds": 50,
        "upstream_status": "up",
        "hot_tier_hits": 30,
        "hot_tier_misses": 10,
        "hot_tier_hit_ratio": 0.75,
        "upstream_pool_size": 1,
        "worker_index": 0,
        "worker_pid": 11,
    }
    b = {**a, "commands_forwarded": 5, "connected_clients": 1, "forward_latency_p99_us": 300,
         "uptime_in_seconds": 49, "upstream_status": "down", "hot_tier_hits": 0, "hot_tier_misses": 10,
         "hot_tier_hit_ratio": 0.0, "worker_index": 1, "worker_pid": 12}  # fmt: skip
    total = merge_figures([a, b])
    assert total["commands_forwarded"] == 15 and total["connected_clients"] == 3
    assert total["forward_latency_p99_us"] == 300  # (the worst worker's)
    assert total["uptime_in_seconds"] == 50 and total["upstream_pool_size"] == 1
    assert total["hot_tier_hit_ratio"] == 0.6  # 30 / 50, not the mean of 0.75 and 0.0
    assert total["upstream_status"] == "up" and total["workers"] == 2
    assert "worker_pid" not in total and "worker_index" not in total


def test_workers_flag() -> None:
    assert resolve_workers("3") == 3
    assert resolve_workers("auto") >= 1
    for bad in ("0", "x", "-2"):
        with pytest.raises(ValueError):
            resolve_workers(bad)
