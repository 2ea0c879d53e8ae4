"""Two Predis configurations side by side: redis-benchmark throughput and the proxy's CPU time per
request (user + system, from /proc), each configuration in a fresh proxy, alternating.

    python -m bench.cpuside [--test get] [--pipeline 16] [--requests 1600000] [--repeats 3]
        [--a "--hot-tier cpu --hot-tier-bytes 65536"] [--b "--hot-tier off"] [--b-tree DIR]

Ten thousand 64-byte keys, 50 clients; every proxy warmed with a tenth of a run first. CPU per
request separates the proxy's own cost from what the two shared cores let it reach. ``--b-tree``
runs B from another checkout, to compare two versions of the code (``git worktree add DIR REV``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys

from bench.loadtest import ProxyProcess, redis_benchmark
from bench.tierbench import populate
from proxy.embedded import EmbeddedRedis


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(
    url: str, flags: list[str], args: argparse.Namespace, tree: str | None = None
) -> tuple[list[float], float]:
    """Requests/s of each of three runs and the proxy's CPU microseconds per request over them."""
    proxy = ProxyProcess(url, flags, cwd=tree)
    try:
        redis_benchmark(proxy.port, args.test, args.requests // 10, 50, args.pipeline, 10_000)
        start = cpu_seconds(proxy.proc.pid)
        rps = [
            r.rps
            for _ in range(3)
            for r in redis_benchmark(proxy.port, args.test, args.requests, 50, args.pipeline, 10_000)
        ]
        return rps, (cpu_seconds(proxy.proc.pid) - start) / (3 * args.requests) * 1e6
    finally:
        proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpuside", description=__doc__.splitlines()[0])
    parser.add_argument("--test", default="get")
    parser.add_argument("--pipeline", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1_600_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--a", default="--hot-tier cpu --hot-tier-bytes 65536", help="serve flags of A")
    parser.add_argument("--b", default="--hot-tier off", help="serve flags of B")
    parser.add_argument("--b-tree", help="run B from this checkout (default: this one)")
    args = parser.parse_args(argv)
    if args.b_tree and not os.path.isfile(os.path.join(args.b_tree, "proxy", "cli.py")):
        parser.error(f"--b-tree {args.b_tree}: not a Predis checkout (no proxy/cli.py)")
    results: dict[str, tuple[list[float], list[float]]] = {"A": ([], []), "B": ([], [])}
    with EmbeddedRedis() as upstream:
        populate(upstream.port, 10_000)
        for _ in range(args.repeats):
            for name, flags in (("A", args.a), ("B", args.b)):
                tree = args.b_tree if name == "B" else None
                rps, cpu = measure(upstream.url, shlex.split(flags), args, tree)
                results[name][0].extend(rps)
                results[name][1].append(cpu)
                print(f"{name} rps {[round(r) for r in rps]} proxy CPU {cpu:.2f} us/request", flush=True)
    for name, flags in (("A", args.a), ("B", args.b)):
        rps, cpu = results[name]
        print(
            f"{name} ({flags}): median {statistics.median(rps):,.0f} requests/s "
            f"({min(rps):,.0f}-{max(rps):,.0f}), proxy CPU median {statistics.median(cpu):.2f} us/request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
