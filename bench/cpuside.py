"""Two Predis configurations side by side: redis-benchmark throughput and the proxy's CPU time per
request (user + system, from /proc), each configuration in a fresh proxy, alternating.

    python -m bench.cpuside [--test get] [--pipeline 16] [--requests 1600000] [--repeats 3]
        [--a "--hot-tier cpu --hot-tier-bytes 65536"] [--b "--hot-tier off"] [--b-tree DIR]
        [--b-burner spin|memory]

Ten thousand 64-byte keys, 50 clients; every proxy warmed with a tenth of a run first. CPU per
request separates the proxy's own cost from what the two shared cores let it reach; the CPU of the
proxy's child processes (the prediction engine) is reported apart. ``--b-tree`` runs B from another
checkout, to compare two versions of the code (``git worktree add DIR REV``). ``--b-burner`` runs a
busy loop at the engine's priority (nice 19) beside B: CPU taken at that priority with none of the
engine's work (``spin``), or with its sweep through memory (``memory``), to tell what the engine
costs by competing for the cores from what it costs the proxy's own code.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys

from bench.loadtest import ProxyProcess, redis_benchmark
from bench.tierbench import populate
from proxy.embedded import EmbeddedRedis


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def children_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each process below ``pid`` (its children, theirs, ...)."""
    out: dict[int, float] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            for kid in kids:
                try:
                    out[kid] = cpu_seconds(kid)
                except OSError:
                    continue
                todo.append(kid)
    return out


# Busy loops at the engine's priority: one that touches almost no memory, and one that sweeps 16 MB
# (half this machine's L3, the size of a batch's logits and the model's weights) as the engine's
# matrix work does, evicting the proxy's caches.
BURNERS = {
    "spin": "import os; os.nice(19)\nwhile True: pass",
    "memory": "import os, numpy as np; os.nice(19); a = np.ones(2 << 20)\nwhile True: a *= 1.0000001",
}


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of ``values``: the order statistics
    x(k) and x(n-k+1) with k the largest rank for which a Binomial(n, 1/2) count falls below k
    with probability at most (1 - confidence) / 2 (it covers the median at least ``confidence`` of
    the time, whatever the distribution). None when there are too few values for any such k."""
    from scipy.stats import binom

    x, n = sorted(values), len(values)
    # (The interval x(k)..x(n-k+1) misses the median with probability 2 P(B <= k - 1).)
    k = int((binom.cdf(range(n // 2), n, 0.5) <= (1 - confidence) / 2).sum())
    return (x[k - 1], x[n - k]) if k else None


def measure(
    url: str, flags: list[str], args: argparse.Namespace, tree: str | None = None, burner: str | None = None
) -> tuple[list[float], float, float]:
    """Requests/s of each of three runs, and the CPU microseconds per request over them of the
    proxy and of its child processes (a child that started during the runs counts from zero)."""
    proxy = ProxyProcess(url, flags, cwd=tree)
    spin = subprocess.Popen([sys.executable, "-c", BURNERS[burner]]) if burner else None
    try:
        if proxy.stats().get("prefetch_engine_up") is not None:  # (prediction is on)
            proxy.wait_for_engine()  # (its start-up, a model's torch import, is not in the runs)
        redis_benchmark(proxy.port, args.test, args.requests // 10, 50, args.pipeline, 10_000)
        start, kids = cpu_seconds(proxy.proc.pid), children_cpu_seconds(proxy.proc.pid)
        rps = [
            r.rps
            for _ in range(3)
            for r in redis_benchmark(proxy.port, args.test, args.requests, 50, args.pipeline, 10_000)
        ]
        own = cpu_seconds(proxy.proc.pid) - start
        after = children_cpu_seconds(proxy.proc.pid)
        children = sum(t - kids.get(pid, 0.0) for pid, t in after.items())
        per = 3 * args.requests / 1e6
        return rps, own / per, children / per
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()
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
    parser.add_argument(
        "--b-burner",
        choices=sorted(BURNERS),
        help="a nice-19 busy loop runs beside B (spin, or memory: sweeping 16 MB)",
    )
    args = parser.parse_args(argv)
    if args.b_tree and not os.path.isfile(os.path.join(args.b_tree, "proxy", "cli.py")):
        parser.error(f"--b-tree {args.b_tree}: not a Predis checkout (no proxy/cli.py)")
    results: dict[str, tuple[list[float], list[float], list[float]]] = {"A": ([], [], []), "B": ([], [], [])}
    with EmbeddedRedis() as upstream:
        populate(upstream.port, 10_000)
        for _ in range(args.repeats):
            for name, flags in (("A", args.a), ("B", args.b)):
                tree = args.b_tree if name == "B" else None
                burner = args.b_burner if name == "B" else None
                rps, cpu, children = measure(upstream.url, shlex.split(flags), args, tree, burner)
                results[name][0].extend(rps)
                results[name][1].append(cpu)
                results[name][2].append(children)
                print(
                    f"{name} rps {[round(r) for r in rps]} proxy CPU {cpu:.2f} us/request, "
                    f"its children {children:.2f}",
                    flush=True,
                )
    for name, flags in (("A", args.a), ("B", args.b)):
        all_rps, cpus, kids = results[name]
        extra = f" + a nice-19 {args.b_burner} loop" if args.b_burner and name == "B" else ""
        print(
            f"{name} ({flags}{extra}): median {statistics.median(all_rps):,.0f} requests/s "
            f"({min(all_rps):,.0f}-{max(all_rps):,.0f}), proxy CPU median {statistics.median(cpus):.2f} "
            f"us/request, its children {statistics.median(kids):.2f}"
        )
    # Each pair's ratios (A and B ran one after the other): their median, and the middle of their
    # spread, say more than the ratio of medians on a noisy machine.
    a_rps, b_rps = (results[name][0] for name in ("A", "B"))
    pairs = [
        statistics.median(a_rps[3 * i : 3 * i + 3]) / statistics.median(b_rps[3 * i : 3 * i + 3])
        for i in range(args.repeats)
    ]
    cpu_pairs = [a / b for a, b in zip(results["A"][1], results["B"][1], strict=True)]
    shown = [("requests/s", pairs), ("proxy CPU per request", cpu_pairs)]
    if all(results["B"][2]) and all(results["A"][2]):  # (both have child processes: engines)
        shown.append(
            ("engine CPU per request", [a / b for a, b in zip(results["A"][2], results["B"][2], strict=True)])
        )
    for what, ratios in shown:
        ratios.sort()
        quarter = len(ratios) // 4
        interval = median_interval(ratios)
        ci = f", 95% interval of the median {interval[0]:.3f}-{interval[1]:.3f}" if interval else ""
        print(
            f"A/B {what}, per pair: median {statistics.median(ratios):.3f}{ci}, middle half "
            f"{ratios[quarter]:.3f}-{ratios[-1 - quarter]:.3f}, all {ratios[0]:.3f}-{ratios[-1]:.3f} "
            f"({len(ratios)} pairs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
