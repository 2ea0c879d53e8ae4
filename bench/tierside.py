"""Hit path side by side: redis-benchmark GET against Redis directly, Predis with the tier, and the
plain dict server (bench/dictserver.py), in rotation; every repeat's figures, not only medians.

    python -m bench.tierside [--repeats 6] [--requests 100000] [--pin] [--b-tree DIR]
        [-- PREDIS SERVE FLAGS...]

Ten thousand 64-byte keys, a 64 MB tier, 50 clients, unpipelined; each target warmed once.
``--pin`` gives the load generator the first CPU and every server (Redis, the proxy, the dict
server) the second, so that no run shares its server's core with redis-benchmark: on a 2-core
machine the scheduler otherwise places them as it likes, run by run. Each figure line also gives
the server's CPU time per request (user + system, from /proc). ``--b-tree`` adds a fourth target,
the tier run from another checkout (``git worktree add DIR REV``), to compare two versions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from bench.cpuside import cpu_seconds
from bench.loadtest import ProxyProcess, pin, redis_benchmark
from bench.tierbench import populate
from proxy.embedded import EmbeddedRedis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tierside", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--pin", action="store_true", help="redis-benchmark on CPU 0, the servers on CPU 1")
    parser.add_argument("--b-tree", help="also run the tier from this checkout (target 'b-tree')")
    parser.add_argument("serve_flags", nargs="*", help="extra flags for the tier's predis serve")
    args = parser.parse_args(argv)
    if args.pin and not {0, 1} <= os.sched_getaffinity(0):
        parser.error("--pin needs CPUs 0 and 1")
    if args.b_tree and not os.path.isfile(os.path.join(args.b_tree, "proxy", "cli.py")):
        parser.error(f"--b-tree {args.b_tree}: not a Predis checkout (no proxy/cli.py)")
    bench_cpus = {0} if args.pin else None
    with EmbeddedRedis() as upstream:
        populate(upstream.port, 10_000)
        flags = ["--hot-tier", "cpu", "--hot-tier-bytes", str(64 << 20), *args.serve_flags]
        tier = ProxyProcess(upstream.url, flags)
        floor = ProxyProcess(upstream.url, reference="bench.dictserver")
        other = ProxyProcess(upstream.url, flags, cwd=args.b_tree) if args.b_tree else None
        try:
            assert upstream.process is not None
            targets = {
                "direct": (upstream.port, upstream.process.pid),
                "tier": (tier.port, tier.proc.pid),
                "dict": (floor.port, floor.proc.pid),
            }
            if other is not None:
                targets["b-tree"] = (other.port, other.proc.pid)
            if args.pin:
                for _, pid in targets.values():
                    pin(pid, {1})
            for port, _ in targets.values():
                redis_benchmark(port, "get", args.requests // 2, 50, 1, 10_000, bench_cpus)
            runs: dict[str, list] = {t: [] for t in targets}
            cpu: dict[str, list[float]] = {t: [] for t in targets}
            for _ in range(args.repeats):
                for target, (port, pid) in targets.items():
                    before = cpu_seconds(pid)
                    runs[target] += redis_benchmark(port, "get", args.requests, 50, 1, 10_000, bench_cpus)
                    cpu[target].append((cpu_seconds(pid) - before) / args.requests * 1e6)
            for target, rs in runs.items():
                ratios = [r.rps / d.rps for r, d in zip(rs, runs["direct"], strict=True)]
                print(
                    f"{target:7s} rps {[round(r.rps) for r in rs]} p50 ms {[r.p50_ms for r in rs]} "
                    f"ratio {[round(x, 3) for x in ratios]} median {statistics.median(ratios):.3f}, "
                    f"p50 median {statistics.median(r.p50_ms for r in rs):.3f} ms, "
                    f"server CPU median {statistics.median(cpu[target]):.2f} us/request"
                )
            print("tier hit ratio", tier.stats().get("hot_tier_hit_ratio"))
        finally:
            tier.close()
            floor.close()
            if other is not None:
                other.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
