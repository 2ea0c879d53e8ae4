"""A soak: hours of mixed reads and writes through a proxy with live prefetching and an A/B test on,
watching that nothing grows and nothing goes stale.

    python -m bench.soak [--seconds 3600] [--sample 10] [--keys 20000]

A `predis serve` process (its own process: ``--ab MARKOV=markov,NONE=none``) in front of a Redis;
the history workload (bench.history: a writer through the proxy, one straight to Redis, two readers
through the proxy, all recorded and checked; paced, 5 ms between a thread's operations, so that an
hour's history stays a size the check holds) and a scanner reading ``--keys`` keys in order over and
over (the tier churns, OBL-like runs for the prefetchers). Every ``--sample`` seconds one row: the
proxy's and its prediction engine's resident memory and open descriptors, the tier's bytes, the
reads' p99 latency in that window, the operations so far. At the end the history's verdict, and
the first window after the warm-up against the last: memory, descriptors, p99.

``run`` returns the summary (the CI test runs a minute of it and checks it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import redis

from bench.history import DIRECT, PROXIED, Workload, check
from bench.loadtest import ProxyProcess
from proxy.embedded import EmbeddedRedis


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


def run(seconds: float, sample: float = 10.0, keys: int = 20_000, say: Any = print) -> dict[str, Any]:
    with EmbeddedRedis() as upstream:
        direct = redis.Redis(port=upstream.port)
        for start in range(0, keys, 5_000):
            direct.mset({f"scan:{i}": f"value-{i}" for i in range(start, min(keys, start + 5_000))})
        proxy = ProxyProcess(
            upstream.url,
            ["--ab", "MARKOV=markov,NONE=none", "--prefetch-engine-priority", "normal"],
        )
        stop = threading.Event()

        def scanner() -> None:
            client = redis.Redis(port=proxy.port, socket_timeout=10)
            i = 0
            while not stop.is_set():
                try:
                    client.get(f"scan:{i % keys}")
                except redis.RedisError:
                    time.sleep(0.01)
                i += 1

        rows: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 60
            while proxy.stats().get("prefetch_engine_up") != 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("soak: the prediction engine did not come up")
                time.sleep(0.1)
            scan = threading.Thread(target=scanner, daemon=True)
            with Workload(proxy.port, upstream.port, pace=0.005) as load:
                scan.start()
                started = last = time.monotonic()
                while (now := time.monotonic()) - started < seconds:
                    time.sleep(min(sample, max(0.0, seconds - (now - started))))
                    now = time.monotonic()
                    ops = list(load.history.ops)
                    window = [
                        op.complete - op.invoke
                        for op in ops
                        if op.kind == "read" and op.ok and op.invoke >= last
                    ]
                    engine = children(proxy.proc.pid)
                    stats = proxy.stats()
                    row = {
                        "t": round(now - started),
                        "proxy_rss_mb": round(rss_mb(proxy.proc.pid), 1),
                        "proxy_fds": fds(proxy.proc.pid),
                        "engine_rss_mb": round(sum(rss_mb(p) for p in engine), 1),
                        "tier_bytes": stats.get("hot_tier_bytes_used"),
                        "read_p99_ms": round(1000 * (p99(window) or 0.0), 2),
                        "operations": len(ops),
                        "errors": sum(1 for op in ops if not op.ok),
                    }
                    rows.append(row)
                    say(json.dumps(row))
                    last = now
                stop.set()
            scan.join(10)
            values = direct.mget(PROXIED + DIRECT)
            final = {
                k: (None if v is None else int(v)) for k, v in zip(PROXIED + DIRECT, values, strict=True)
            }
            verdict = check(load.history.ops, final)
            ab = json.loads(redis.Redis(port=proxy.port).execute_command("PREDIS", "AB", "JSON"))
        finally:
            stop.set()
            proxy.close()
    settled = rows[min(len(rows) - 1, max(1, len(rows) // 5))]  # (after the first fifth: warm)
    end = rows[-1]
    summary = {
        **verdict.summary(),
        "seconds": seconds,
        "samples": len(rows),
        "proxy_rss_mb": [settled["proxy_rss_mb"], end["proxy_rss_mb"]],
        "proxy_fds": [settled["proxy_fds"], end["proxy_fds"]],
        "engine_rss_mb": [settled["engine_rss_mb"], end["engine_rss_mb"]],
        "read_p99_ms": [settled["read_p99_ms"], end["read_p99_ms"]],
        "ab_reads": {a["name"]: a["gets"] for a in ab["arms"]},
    }
    say("summary " + json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--sample", type=float, default=10)
    parser.add_argument("--keys", type=int, default=20_000)
    args = parser.parse_args(argv)
    summary = run(args.seconds, args.sample, args.keys)
    return 0 if summary["stale_reads"] == 0 and summary["lost_writes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
