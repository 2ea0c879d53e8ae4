"""The demo behind `scripts/demo`: start Redis and two Predis proxies (hot tier on and off), drive
redis-benchmark through all three side by side, and print the figures and the tier's statistics.

Later issues extend this with the ML prefetcher and its A/B result against the heuristics.
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
    print("\nPREDIS STATS of the proxy with the tier:")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
