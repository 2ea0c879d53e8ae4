"""Summing the workers' figures (proxy.workers.merge_figures), without processes."""

from __future__ import annotations

import pytest

from proxy.workers import merge_arms, merge_figures, resolve_workers


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


def test_the_arms_figures_add_up_over_the_workers_and_their_ratios_are_recomputed() -> None:
    a = [{"name": "A", "spec": "none", "gets": 100, "hits": 40, "misses": 60, "prefetch_fills": 0,
          "prefetched_hits": 0, "fetched": 0, "precision": None, "upstream_per_get": 0.6,
          "prediction_p99_us": None},
         {"name": "B", "spec": "markov", "gets": 50, "hits": 30, "misses": 20, "prefetch_fills": 10,
          "prefetched_hits": 5, "fetched": 10, "precision": 0.5, "upstream_per_get": 0.6,
          "prediction_p99_us": 900}]  # fmt: skip
    b = [{**a[0], "gets": 300, "hits": 60, "misses": 240, "upstream_per_get": 0.8},
         {**a[1], "gets": 150, "hits": 70, "misses": 80, "prefetch_fills": 30, "prefetched_hits": 25,
          "fetched": 40, "precision": 0.8333, "prediction_p99_us": 400}]  # fmt: skip
    total = merge_arms([a, b, None])  # (a worker that published no arms yet adds nothing)
    assert [t["name"] for t in total] == ["A", "B"] and total[1]["spec"] == "markov"
    assert (total[0]["gets"], total[0]["hits"], total[0]["misses"]) == (400, 100, 300)
    assert (total[1]["gets"], total[1]["prefetch_fills"], total[1]["prefetched_hits"]) == (200, 40, 30)
    assert total[1]["precision"] == 0.75 and total[0]["precision"] is None
    assert total[0]["upstream_per_get"] == 0.75 and total[1]["upstream_per_get"] == 0.75  # (100+50)/200
    assert total[1]["prediction_p99_us"] == 900 and total[0]["prediction_p99_us"] is None
    # The one engine's figures, which every worker repeats, are not summed; nor are the arms listed.
    one = {"prefetch_engine_pid": 7, "prefetch_drift_js": 0.25, "prefetch_access_log_files": 3, "ab_arms": a}
    merged = merge_figures([one, {**one, "ab_arms": b}])
    assert merged["prefetch_engine_pid"] == 7 and merged["prefetch_drift_js"] == 0.25
    assert merged["prefetch_access_log_files"] == 3 and "ab_arms" not in merged
