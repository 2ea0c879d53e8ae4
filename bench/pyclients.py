"""Load from redis-py clients, one process each: the cluster-aware client (``redis.RedisCluster``)
going straight to a cluster's nodes, or a plain ``redis.Redis`` pointed at a proxy. Rows in the
shape of ``bench.loadtest.compare``'s, so ``bench.loadtest.show`` prints them.

Used by ``bench.clusterbench --driver redis-py``: the issue's reference for the cluster's forward
path is redis-py's RedisCluster driving the same load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import time
from typing import Any

VALUE = b"x" * 64


def _client(kind: str, port: int) -> Any:
    import redis
    from redis.cluster import RedisCluster

    if kind == "cluster":
        return RedisCluster(host="127.0.0.1", port=port, protocol=2)
    return redis.Redis(host="127.0.0.1", port=port, protocol=2)


def _run(
    kind: str,
    port: int,
    test: str,
    requests: int,
    pipeline: int,
    keyspace: int,
    seed: int,
    start: Any,
    out: Any,
) -> None:
    """One client: ``requests`` GETs or SETs of random keys, ``pipeline`` at a time; puts (seconds,
    every batch's latency in seconds) on ``out``."""
    client = _client(kind, port)
    rng = random.Random(seed)
    keys = [f"key:{i:012d}" for i in range(keyspace)]
    client.ping() if kind != "cluster" else client.get(keys[0])  # (connected, slot map read)
    latencies: list[float] = []
    start.wait()
    began = time.perf_counter()
    done = 0
    while done < requests:
        batch = [keys[rng.randrange(keyspace)] for _ in range(pipeline)]
        t = time.perf_counter()
        if pipeline == 1:
            client.get(batch[0]) if test == "get" else client.set(batch[0], VALUE)
        else:
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.get(key) if test == "get" else pipe.set(key, VALUE)
            pipe.execute()
        latencies.append(time.perf_counter() - t)
        done += pipeline
    out.put((time.perf_counter() - began, latencies))


def measure(kind: str, port: int, test: str, args: argparse.Namespace, pipeline: int) -> dict[str, float]:
    """``args.clients`` processes at once; requests/s over the slowest one's time, batch latency
    percentiles in ms."""
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    per_client = max(pipeline, args.requests * pipeline // args.clients)
    procs = [
        ctx.Process(target=_run, args=(kind, port, test, per_client, pipeline, args.keyspace, i, start, out))
        for i in range(args.clients)
    ]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # (every client connected and waiting)
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    seconds = max(r[0] for r in results)
    latencies = sorted(x for r in results for x in r[1])
    return {
        "rps": round(per_client * len(procs) / seconds),
        "p50_ms": 1e3 * latencies[len(latencies) // 2],
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def compare(
    targets: dict[str, tuple[str, int]], args: argparse.Namespace, pipeline: int
) -> list[dict[str, Any]]:
    """Each test at one pipeline depth: every target in turn, per repeat; medians of the repeats,
    each target's ratio to ``direct`` taken within the repeat."""
    rows = []
    for test in args.tests.split(","):
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(args.repeats):
            for name, (kind, port) in targets.items():
                runs[name].append(measure(kind, port, test, args, pipeline))
        row: dict[str, Any] = {"test": test, "pipeline": pipeline}
        for name in targets:
            row[f"{name}_rps"] = round(statistics.median(r["rps"] for r in runs[name]))
            row[f"{name}_p50_ms"] = statistics.median(r["p50_ms"] for r in runs[name])
            row[f"{name}_p99_ms"] = statistics.median(r["p99_ms"] for r in runs[name])
            if name != "direct":
                ratios = [r["rps"] / d["rps"] for r, d in zip(runs[name], runs["direct"], strict=True)]
                row[f"{name}_ratio"] = statistics.median(ratios)
        rows.append(row)
    return rows
