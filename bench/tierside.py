"""Hit path side by side: redis-benchmark GET against Redis directly, Predis with the tier, and the
plain dict server (bench/dictserver.py), in rotation; every repeat's figures, not only medians.

    python -m bench.tierside [--repeats 6] [--requests 100000] [-- PREDIS SERVE FLAGS...]

Ten thousand 64-byte keys, a 64 MB tier, 50 clients, unpipelined; each target warmed once.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.loadtest import ProxyProcess, redis_benchmark
from bench.tierbench import populate
from proxy.embedded import EmbeddedRedis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tierside", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("serve_flags", nargs="*", help="extra flags for the tier's predis serve")
    args = parser.parse_args(argv)
    with EmbeddedRedis() as upstream:
        populate(upstream.port, 10_000)
        tier = ProxyProcess(
            upstream.url, ["--hot-tier", "cpu", "--hot-tier-bytes", str(64 << 20), *args.serve_flags]
        )
        floor = ProxyProcess(upstream.url, reference="bench.dictserver")
        try:
            targets = {"direct": upstream.port, "tier": tier.port, "dict": floor.port}
            for port in targets.values():
                redis_benchmark(port, "get", args.requests // 2, 50, 1, 10_000)
            runs: dict[str, list] = {t: [] for t in targets}
            for _ in range(args.repeats):
                for target, port in targets.items():
                    runs[target] += redis_benchmark(port, "get", args.requests, 50, 1, 10_000)
            for target, rs in runs.items():
                ratios = [r.rps / d.rps for r, d in zip(rs, runs["direct"], strict=True)]
                print(
                    f"{target:7s} rps {[round(r.rps) for r in rs]} p50 ms {[r.p50_ms for r in rs]} "
                    f"ratio {[round(x, 3) for x in ratios]} median {statistics.median(ratios):.3f}"
                )
            print("tier hit ratio", tier.stats().get("hot_tier_hit_ratio"))
        finally:
            tier.close()
            floor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
