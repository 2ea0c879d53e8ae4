"""The demo behind `scripts/demo`: start Redis and two Predis proxies (hot tier on and off), drive
redis-benchmark through all three side by side, and print the figures and the tier's statistics.
Then the A/B story: generate a `web` workload, let the simulator pick the best heuristic on it,
start a proxy that splits the keys between that heuristic and no prefetching, replay another seed
of the workload through it and print the A/B report with its significance.

The model is not yet a live arm (issue 20: its online step must get cheaper first), so the live
experiment is the best heuristic against none; `predis sim ... --prefetch ml:DIR` shows the model
offline.
"""

from __future__ import annotations

import argparse
import sys

from bench.loadtest import ProxyProcess, build_parser, compare, print_table
from bench.tierbench import populate
from proxy.embedded import EmbeddedRedis


def main() -> int:
    args = build_parser().parse_args(["--requests", "50000", "--repeats", "1"])
    with EmbeddedRedis() as upstream:
        print(f"started redis-server on port {upstream.port}; writing {args.keyspace} keys of 64 bytes")
        populate(upstream.port, args.keyspace)
        tiered = ProxyProcess(upstream.url, ["--hot-tier", "cpu"])
        plain = ProxyProcess(upstream.url, ["--hot-tier", "off"])
        print(f"started predis with the hot tier on port {tiered.port}, without it on port {plain.port}\n")
        try:
            targets = {"direct": upstream.port, "tier": tiered.port, "notier": plain.port}
            compare(targets, argparse.Namespace(**{**vars(args), "tests": "get"}), 1)  # warm the tier
            rows = []
            for pipeline in (1, 16):
                rows += compare(targets, args, pipeline)
            print(
                "redis-benchmark -c 50 -r 10000 -d 64: Redis directly, Predis with its tier, Predis without:\n"
            )
            print_table(rows, list(targets))
            stats = tiered.stats()
        finally:
            tiered.close()
            plain.close()
    print("\nPREDIS STATS of the proxy with the tier (redis-benchmark):")
    for key in (
        "commands_forwarded",
        "commands_local",
        "hot_tier_hits",
        "hot_tier_misses",
        "hot_tier_hit_ratio",
        "hot_tier_demand_fills",
        "hot_tier_invalidations_local",
        "hot_tier_invalidations_tracking",
        "hot_tier_entries",
        "hot_tier_bytes_used",
        "hot_tier_served_latency_p50_us",
        "forward_latency_p50_us",
        "upstream_errors",
    ):
        print(f"  {key}: {stats[key]}")
    ab_story()
    return 0


def ab_story(accesses: int = 30_000, rate: float = 3_000.0) -> None:
    """Pick the best heuristic offline, then test it live against no prefetching (one repeat of
    ``bench.liveab``)."""
    import tempfile

    from accesslog.generators import generate
    from accesslog.log import write_log
    from bench.liveab import run_live, tier_bytes_for
    from prefetch.sim import simulate

    seen = generate("web", accesses, seed=1)
    report = simulate(seen, "5%", ["obl", "markov", "pg", "frequency"], with_belady=False)
    best = report.best_heuristic
    print(
        f"\nA/B: on a web workload (seed 1, {accesses:,} accesses) the simulator's best heuristic at a 5% "
        f"cache is {best}"
    )
    live = generate("web", accesses, seed=2)
    tier_bytes = tier_bytes_for(live, 0.05)
    arms = f"{best.upper()}={best},NONE=none"
    print(
        f"starting predis with --ab {arms} and a {tier_bytes:,}-byte tier; replaying seed 2 at "
        f"{rate:,.0f} requests/s\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/web-seed2.parquet"
        write_log(live, path)
        run_live(path, tier_bytes, arms, rate)


if __name__ == "__main__":
    sys.exit(main())
