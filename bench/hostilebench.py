"""Hostile clients under load: does a well-behaved client's latency stay where it was?

    python -m bench.hostilebench [--seconds 10] [--repeats 3] [--targets proxy,redis]

A `predis serve` process (defaults: the shared upstream connection, the hot tier) in front of a
Redis. A victim client reads (unpipelined GETs of 1,000 keys) for ``--seconds`` while nothing else
happens, then while one kind of hostile client does its worst (in a process of its own, so that
what the victim measures is the proxy, not this interpreter's lock), alternating, ``--repeats``
times each; the victim's p50 and p99 in each window, the ratio of the hostile windows' medians to the
quiet ones', the errors it saw, and the proxy's resident memory at the end of each window:

* ``half-commands``: 500 connections each holding half a command (a slow sender);
* ``never-read``: 20 connections each pipelining 20,000 GETs of a 1 KiB value and never reading;
* ``giant-args``: 4 clients writing 32 MiB values in a loop;
* ``flood``: connections opened and closed as fast as one thread can;
* ``garbage``: malformed requests (the fuzzing seeds and regressions of the request path) on new
  connections, as fast as one thread can.

``--targets proxy,redis`` also points the victim and the same hostile clients at the Redis
directly, in turn with the proxy within each repeat: the reference for what a hostile client costs
the others there (the memory column is then Redis's).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench.loadtest import ProxyProcess
from bench.soak import rss_mb
from proxy.embedded import EmbeddedRedis
from proxy.resp import encode_command

KEYS = 1_000


def victim(port: int, seconds: float) -> dict[str, Any]:
    client = redis.Redis(port=port, socket_timeout=10, protocol=2)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    i = 0
    while (start := time.perf_counter()) < deadline:
        try:
            client.get(f"key:{i % KEYS}")
            latencies.append(time.perf_counter() - start)
        except redis.RedisError:
            errors += 1
        i += 1
    ordered = sorted(latencies)
    return {
        "reads": len(ordered),
        "p50_us": round(1e6 * ordered[len(ordered) // 2]) if ordered else None,
        "p99_us": round(1e6 * ordered[int(0.99 * (len(ordered) - 1))]) if ordered else None,
        "errors": errors,
    }


def half_commands(port: int, stop: Any) -> None:  # (a multiprocessing.Event)
    socks = []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nhalf")
        socks.append(s)
    stop.wait()
    for s in socks:
        s.close()


def never_read(port: int, stop: Any) -> None:  # (a multiprocessing.Event)
    socks = []
    request = encode_command([b"GET", b"big"]) * 20_000
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        try:
            s.send(request)
        except BlockingIOError:
            pass
        socks.append(s)
    stop.wait()
    for s in socks:
        s.close()


def giant_args(port: int, stop: Any) -> None:  # (a multiprocessing.Event)
    value = b"x" * (32 << 20)

    def writer() -> None:
        client = redis.Redis(port=port, socket_timeout=60, protocol=2)
        while not stop.is_set():
            try:
                client.set("giant", value)
            except redis.RedisError:
                time.sleep(0.01)

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def flood(port: int, stop: Any) -> None:  # (a multiprocessing.Event)
    while not stop.is_set():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            time.sleep(0.001)


def garbage(port: int, stop: Any) -> None:  # (a multiprocessing.Event)
    root = Path(__file__).resolve().parents[1] / "fuzz"
    inputs = [
        p.read_bytes()
        for d in ("seeds", "regressions")
        for t in ("request_parser", "request_reader")
        for p in sorted((root / d / t).glob("*"))
        if p.is_file()
    ]
    i = 0
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(inputs[i % len(inputs)])
        except OSError:
            pass
        i += 1


HOSTILES: dict[str, Callable[[int, Any], None]] = {
    "half-commands": half_commands,
    "never-read": never_read,
    "giant-args": giant_args,
    "flood": flood,
    "garbage": garbage,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostilebench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each window's length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hostiles", default=",".join(HOSTILES), help="which, comma-separated")
    parser.add_argument("--proxy-args", default="", help="more predis serve flags, e.g. '--upstream-pool 0'")
    parser.add_argument("--targets", default="proxy", help="proxy, redis (directly), or both: proxy,redis")
    args = parser.parse_args(argv)
    kinds = [k for k in args.hostiles.split(",") if k]
    unknown = [k for k in kinds if k not in HOSTILES]
    if unknown:
        print(f"bench: unknown hostile client {unknown[0]!r}; known: {', '.join(HOSTILES)}", file=sys.stderr)
        return 2
    targets = [t for t in args.targets.split(",") if t]
    if not targets or any(t not in ("proxy", "redis") for t in targets):
        print(f"bench: --targets {args.targets!r}: name proxy, redis or both", file=sys.stderr)
        return 2
    rows = []
    with EmbeddedRedis() as upstream:
        direct = redis.Redis(port=upstream.port)
        direct.mset({f"key:{i}": f"value-{i}" for i in range(KEYS)})
        direct.set("big", b"v" * 1024)
        proxy = ProxyProcess(upstream.url, ["--max-clients", "2000", *args.proxy_args.split()])
        try:
            assert upstream.process is not None
            where = {"proxy": (proxy.port, proxy.proc.pid), "redis": (upstream.port, upstream.process.pid)}
            for kind in kinds:
                quiet: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
                hostile: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
                mem: dict[str, list[float]] = {t: [] for t in targets}
                for _ in range(args.repeats):
                    for target in targets:
                        port, pid = where[target]
                        quiet[target].append(victim(port, args.seconds))
                        # (In a process of its own: the victim's latency must be the proxy's, not
                        # this interpreter's, where a writer's 32 MiB command would hold the GIL.)
                        stop = multiprocessing.Event()
                        worker = multiprocessing.Process(
                            target=HOSTILES[kind], args=(port, stop), daemon=True
                        )
                        worker.start()
                        time.sleep(0.5)  # (the hostile clients in place)
                        hostile[target].append(victim(port, args.seconds))
                        mem[target].append(round(rss_mb(pid), 1))
                        stop.set()
                        worker.join(60)
                        if worker.is_alive():
                            worker.kill()
                        time.sleep(1.0)  # (it recovers before the next quiet window)

                def med(runs: list[dict[str, Any]], key: str) -> float:
                    return statistics.median(r[key] for r in runs)

                for target in targets:
                    q, h = quiet[target], hostile[target]
                    row = {
                        "hostile": kind,
                        "target": target,
                        "p50_us": [med(q, "p50_us"), med(h, "p50_us")],
                        "p99_us": [med(q, "p99_us"), med(h, "p99_us")],
                        "p99_ratio": round(med(h, "p99_us") / med(q, "p99_us"), 2),
                        "victim_errors": sum(r["errors"] for r in q + h),
                        "rss_mb": max(mem[target]),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
