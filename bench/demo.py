"""The demo behind `scripts/demo`: start Redis and Predis, drive redis-benchmark through both, and
print the side-by-side figures and the proxy's own statistics.

Later issues extend this with the hot tier and the ML-versus-heuristic A/B result; today it shows
the proxy core.
"""

from __future__ import annotations

import sys

from bench.loadtest import ProxyProcess, compare, print_table
from proxy.embedded import EmbeddedRedis


class _Args:
    requests = 20_000
    repeats = 1
    clients = 50
    tests = "get,set"
    keyspace = 10_000


def main() -> int:
    with EmbeddedRedis() as upstream:
        print(f"started redis-server on port {upstream.port}")
        proxy = ProxyProcess(upstream.url)
        print(f"started predis serve on port {proxy.port} (upstream {upstream.url})\n")
        try:
            rows = []
            for pipeline in (1, 16):
                rows += compare({"direct": upstream.port, "predis": proxy.port}, _Args(), pipeline)  # type: ignore[arg-type]
            print("redis-benchmark -t get,set -c 50, direct and through the proxy:\n")
            print_table(rows, ["direct", "predis"])
            stats = proxy.stats()
        finally:
            proxy.close()
    print("\nPREDIS STATS after the run:")
    for key in (
        "commands_forwarded",
        "bytes_in",
        "bytes_out",
        "upstream_errors",
        "protocol_errors",
        "forward_latency_p50_us",
        "forward_latency_p99_us",
    ):
        print(f"  {key}: {stats[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
