"""The soak's CI minute, as issue 23 asks (bench.soak; the hour's figures are in bench/RESULTS.md):
a minute of mixed reads and writes through a proxy process with an A/B test of live prefetching, a
scanner churning the tier: no stale read, no lost write, no error, descriptors where they were once
warm, memory within bounds, both arms read."""

from __future__ import annotations

from bench.soak import run


def test_a_minute_of_soak() -> None:
    summary = run(60, sample=5, keys=20_000, say=lambda line: None)
    assert summary["stale_reads"] == 0 and summary["lost_writes"] == 0 and summary["errors"] == 0
    assert summary["reads"] > 1_000 and summary["writes_acked"] > 1_000
    settled, end = summary["proxy_fds"]
    assert end <= settled + 4  # (a connection or two being opened; no leak)
    # The tier (64 MiB by default) fills while the scanner runs: the proxy's memory may grow by it,
    # never past it.
    grown = summary["proxy_rss_mb"][1] - summary["proxy_rss_mb"][0]
    assert grown < 96, summary
    assert min(summary["ab_reads"].values()) > 0
