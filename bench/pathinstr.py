"""Instructions the proxy's process executes per GET, under two configurations: a count, not a
time, for questions that throughput on a shared 2-core machine cannot resolve (its run-to-run
spread is 5-6% either way, bench/RESULTS.md).

Each run starts the proxy under valgrind's callgrind with its counting off, waits until the
prediction engine is up, warms the tier with unpipelined GETs over 1,000 keys (every counted GET
is then a tier hit), counts the proxy's instructions over ``--requests`` more GETs from
redis-benchmark, and stops. The count is the proxy process's alone: the engine is a child that
valgrind does not follow. It is not free of timing: under valgrind the proxy runs tens of times
slower while the engine does not, so a batch to the engine holds a read or two instead of dozens,
per-batch work weighs per read as it would not natively, and work done on timers (reports,
figures, the loop's watch) is spread over fewer GETs. Repeated runs of one configuration spread by
3-15% (bench/HISTORY.md): a large difference shows (live prediction against none), a 2% one does
not. A and B alternate and each prints its runs.

    python -m bench.pathinstr --a "--hot-tier cpu --prefetch markov --access-log-dir /tmp/alog" \\
        --b "--hot-tier cpu --prefetch markov" --requests 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.loadtest import ProxyProcess
from bench.tierbench import populate
from proxy.embedded import EmbeddedRedis

# Few enough keys that the warm-up reads every one many times over: every counted GET is then a
# tier hit, the same work in both configurations (random misses made the count wander by a third).
KEYSPACE = 1_000


def benchmark(port: int, requests: int) -> None:
    subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "get", "-n", str(requests), "-r", str(KEYSPACE)]
        + ["-c", "10", "-P", "1", "-d", "64", "-q"],
        check=True,
        capture_output=True,
        timeout=3600,
    )


def total_instructions(out_file: Path) -> int:
    """The ``totals:`` line of a callgrind output file (its ``summary:`` line, written when the
    count started, can be 0 when counting was switched on while the program ran)."""
    for line in out_file.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{out_file}: no totals line")


def count(upstream: str, flags: list[str], requests: int, warmup: int, workdir: Path, tag: str) -> int:
    """The proxy's instructions over ``requests`` GETs after ``warmup`` of them, with ``flags``."""
    out_file = workdir / f"callgrind.{tag}.out"
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}"]
    proxy = ProxyProcess(upstream, flags, wrapper=wrapper, start_within=300)
    try:
        if any(f.startswith(("--prefetch", "--ab")) for f in flags):
            proxy.wait_for_engine(timeout=600)
        benchmark(proxy.port, warmup)
        pid = str(proxy.proc.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        benchmark(proxy.port, requests)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
    finally:
        proxy.proc.terminate()
        proxy.proc.wait(300)
    return total_instructions(out_file)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pathinstr", description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the proxy's flags in configuration A (quoted)")
    ap.add_argument("--b", required=True, help="the proxy's flags in configuration B (quoted)")
    ap.add_argument("--requests", type=int, default=20_000, help="GETs counted per run")
    ap.add_argument("--warmup", type=int, default=10_000, help="GETs before the count starts")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration, alternating")
    args = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"bench.pathinstr: {tool} is not installed", file=sys.stderr)
            return 2
    if min(args.requests, args.warmup, args.repeats) < 1:
        print("bench.pathinstr: --requests, --warmup and --repeats must be at least 1", file=sys.stderr)
        return 2
    configs = {"A": shlex.split(args.a), "B": shlex.split(args.b)}
    per_get: dict[str, list[float]] = {"A": [], "B": []}
    with EmbeddedRedis() as upstream, tempfile.TemporaryDirectory() as tmp:
        populate(upstream.port, KEYSPACE)
        for r in range(args.repeats):
            for name, flags in configs.items():
                started = time.monotonic()
                n = count(upstream.url, flags, args.requests, args.warmup, Path(tmp), f"{name}{r}")
                per_get[name].append(n / args.requests)
                print(
                    f"run {r + 1} {name}: {n:,} instructions, {n / args.requests:,.0f} per GET "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
    print(f"\nA: {args.a}\nB: {args.b}")
    for name in configs:
        runs = per_get[name]
        print(
            f"{name}: median {statistics.median(runs):,.0f} instructions per GET (runs {min(runs):,.0f}-{max(runs):,.0f})"
        )
    ratio = statistics.median(per_get["A"]) / statistics.median(per_get["B"])
    print(f"A / B: {ratio:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
