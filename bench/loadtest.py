"""Load run: redis-benchmark against Redis directly and through the proxy, side by side.

    python -m bench.loadtest [--requests N] [--repeats R] [--clients C] [--pipelines 1,16]
                             [--resp3] [--b-tree DIR]

Starts its own redis-server and a `predis serve` process (a separate process, as in production),
then alternates direct and proxied runs of `redis-benchmark -t get,set` so both see the same machine
noise, and reports medians of throughput, p50/p99 latency and the proxy/direct ratio.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis

from proxy.embedded import EmbeddedRedis, free_port


@dataclass
class Run:
    test: str
    rps: float
    p50_ms: float
    p99_ms: float


def pin(pid: int, cpus: set[int]) -> None:
    """Bind every thread of process ``pid`` to ``cpus`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def redis_benchmark(
    port: int,
    tests: str,
    requests: int,
    clients: int,
    pipeline: int,
    keyspace: int,
    cpus: set[int] | None = None,
    resp3: bool = False,
    extra: list[str] | None = None,
) -> list[Run]:
    """One redis-benchmark run; ``cpus``: the CPUs it may run on (default: any); ``resp3``: its
    connections say HELLO 3 first; ``extra``: more of its flags (--tls and its certificates)."""
    cmd = [
        "redis-benchmark",
        "-p",
        str(port),
        "-t",
        tests,
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-P",
        str(pipeline),
        "-r",
        str(keyspace),
        "-d",
        "64",
        "--csv",
        *(["-3"] if resp3 else []),
        *(extra or []),
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    ).stdout
    out = out[max(0, out.find('"test"')) :]  # (in --cluster mode the node list comes first)
    runs = []
    for row in csv.DictReader(io.StringIO(out)):
        runs.append(
            Run(row["test"], float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"]))
        )
    return runs


class ProxyProcess:
    """`predis serve` (or a reference server) in its own process, pointed at the upstream."""

    def __init__(
        self,
        upstream: str,
        extra: list[str] | None = None,
        copy_only: bool = False,
        reference: str = "",
        cwd: str | None = None,
        wrapper: list[str] | None = None,
        start_within: float = 20.0,
    ) -> None:
        """``cwd``: the checkout whose code runs (another version's worktree, say); default this one.
        ``wrapper``: a command the proxy runs under (valgrind's, say), given ``start_within``
        seconds to answer a PING."""
        self.port = free_port()
        if copy_only:
            reference = "bench.copyproxy"
        if reference:  # a reference server: bench.copyproxy or bench.dictserver
            cmd = [sys.executable, "-m", reference, str(self.port), upstream.rsplit(":", 1)[1]]
        else:
            cmd = [
                sys.executable,
                "-m",
                "proxy.cli",
                "serve",
                "--port",
                str(self.port),
                "--upstream",
                upstream,
                "--log-level",
                "warning",
                *(extra or []),
            ]
        self.proc = subprocess.Popen([*(wrapper or []), *cmd], cwd=cwd)
        deadline = time.monotonic() + start_within
        client = redis.Redis(port=self.port, protocol=2)
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("predis serve did not start") from None
                time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        raw = redis.Redis(port=self.port, protocol=2).execute_command("PREDIS", "STATS", "JSON")
        return json.loads(raw)  # type: ignore[no-any-return]

    def wait_for_engine(self, timeout: float = 180.0) -> None:
        """Until the prediction engine is up (its arms' predictors built: a model loaded, torch
        imported). The proxy serves before that and sheds every read meanwhile; a run started at
        once measured the engine's start-up, several seconds on a busy 2-core machine, and an A/B
        test of a short replay could end with no arm's figures at all."""
        deadline = time.monotonic() + timeout
        while not self.stats().get("prefetch_engine_up"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the proxy's prediction engine was not up within {timeout:.0f} s")
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def median_run(runs: list[Run]) -> Run:
    return Run(
        runs[0].test,
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
    )


def compare(
    targets: dict[str, int],
    args: argparse.Namespace,
    pipeline: int,
    baseline: str = "direct",
    extras: dict[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """Run every target once per repeat, interleaved; ratios to ``baseline`` are taken within a
    repeat. ``extras``: more redis-benchmark flags for some targets (``--cluster``)."""
    results: dict[tuple[str, str], list[Run]] = {}
    for _ in range(args.repeats):
        for target, port in targets.items():
            for run in redis_benchmark(
                port,
                args.tests,
                args.requests * pipeline,
                args.clients,
                pipeline,
                args.keyspace,
                resp3=args.resp3,
                extra=(extras or {}).get(target),
            ):
                results.setdefault((target, run.test), []).append(run)
    rows = []
    for test in sorted({t for _, t in results}):
        direct = results[(baseline, test)]
        row: dict[str, Any] = {"test": test, "pipeline": pipeline}
        for target in targets:
            runs = results[(target, test)]
            m = median_run(runs)
            row[f"{target}_rps"] = round(m.rps)
            row[f"{target}_p50_ms"] = m.p50_ms
            row[f"{target}_p99_ms"] = m.p99_ms
            if target != baseline:
                ratios = [r.rps / d.rps for d, r in zip(direct, runs, strict=True)]
                row[f"{target}_ratio"] = round(statistics.median(ratios), 3)
        rows.append(row)
    return rows


def compare_all(
    targets: dict[str, int], args: argparse.Namespace, extras: dict[str, list[str]] | None = None
) -> list[dict[str, Any]]:
    """``compare`` at every pipeline depth in ``args.pipelines``."""
    rows: list[dict[str, Any]] = []
    for pipeline in (int(p) for p in args.pipelines.split(",")):
        rows += compare(targets, args, pipeline, extras=extras)
    return rows


def print_table(rows: list[dict[str, Any]], targets: list[str]) -> None:
    head = f"{'test':<5} {'-P':>3}"
    for t in targets:
        head += f" {t + ' rps':>12}" + (f" {'ratio':>6}" if t != "direct" else "") + f" {'p50/p99 ms':>13}"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['test']:<5} {r['pipeline']:>3}"
        for t in targets:
            line += f" {r[t + '_rps']:>12}" + (f" {r[t + '_ratio']:>6.3f}" if t != "direct" else "")
            line += f" {r[t + '_p50_ms']:>6.3f}/{r[t + '_p99_ms']:<6.3f}"
        print(line)


def show(rows: list[dict[str, Any]], targets: list[str], as_json: bool) -> None:
    """The side-by-side benchmarks' output: the rows as JSON, or the table."""
    if as_json:
        print(json.dumps({"rows": rows}, indent=2))
    else:
        print_table(rows, targets)


def benchmark_flags(parser: argparse.ArgumentParser, tests: str = "get,set") -> None:
    """The redis-benchmark runs' flags, shared by the side-by-side benchmarks (``compare`` reads
    them)."""
    parser.add_argument("--requests", type=int, default=100_000, help="requests per run (times -P)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pipelines", default="1,16")
    parser.add_argument("--tests", default=tests)
    parser.add_argument("--keyspace", type=int, default=10_000)


def build_parser() -> argparse.ArgumentParser:
    """The load run's flags (bench.demo takes its defaults from here too)."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.splitlines()[0])
    benchmark_flags(parser)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--no-copy-reference",
        dest="copy_ref",
        action="store_false",
        help="skip the byte-copy reference proxy",
    )
    parser.add_argument(
        "--hot-tier",
        default="off",
        choices=["off", "cpu"],
        help="Predis's hot tier (default off: this run measures the proxy core)",
    )
    parser.add_argument("--resp3", action="store_true", help="redis-benchmark's connections use RESP3 (-3)")
    parser.add_argument(
        "--b-tree",
        help="also run Predis from this checkout (another version's worktree) as target 'predis-b'",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("redis-benchmark") is None:
        print("bench: redis-benchmark not found (apt-get install redis-tools)", file=sys.stderr)
        return 2
    with EmbeddedRedis() as upstream:
        proxy = ProxyProcess(upstream.url, ["--hot-tier", args.hot_tier])
        copier = ProxyProcess(upstream.url, copy_only=True) if args.copy_ref else None
        other = (
            ProxyProcess(upstream.url, ["--hot-tier", args.hot_tier], cwd=args.b_tree)
            if args.b_tree
            else None
        )
        targets = {"direct": upstream.port, "predis": proxy.port}
        if other is not None:
            targets["predis-b"] = other.port
        if copier is not None:
            targets["copy"] = copier.port
        try:
            rows = compare_all(targets, args)
            stats = proxy.stats()
        finally:
            proxy.close()
            for extra in (other, copier):
                if extra is not None:
                    extra.close()
    if args.json:
        print(json.dumps({"rows": rows, "proxy_stats": stats}, indent=2))
    else:
        print_table(rows, list(targets))
        print(
            f"\nproxy forwarded {stats['commands_forwarded']} commands, "
            f"forward-path latency p50 {stats['forward_latency_p50_us']} us, "
            f"p99 {stats['forward_latency_p99_us']} us, errors {stats['upstream_errors']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
