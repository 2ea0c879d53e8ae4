"""A cluster master killed under load: how long clients of the proxy fail, against a cluster-aware
client going straight to the nodes, both watching the same failover, and against the cluster's
node timeout.

    python -m bench.failoverbench [--repeats 3] [--node-timeout-ms 2000] [--keys 20]

Each repeat starts a local 3-master, 3-replica cluster (``--cluster-node-timeout``), a proxy in
front of it (hot tier on), and two writers on keys of one master's slots, in threads: one through
the proxy (plain ``redis.Redis``), one straight to the nodes (redis-py's ``RedisCluster``, default
retries). Each writes and reads back its keys in turn, retrying a failed operation after 10 ms.
The master is killed (SIGKILL); its replica is promoted after the node timeout and the election.
Per client: the outage (the longest time after the kill in which no operation succeeded), when
its last error came, operations failed, and stale reads (a read that did not return the client's own last acknowledged write: must be 0).
Redis itself cannot promote the replica before the node timeout has passed, so the comparison that
says what the proxy adds is against the direct client's outage in the same failover.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.loadtest import ProxyProcess
from proxy.embedded import EmbeddedCluster


class Writer(threading.Thread):
    """Writes each key's next value and reads it back, in turn, until told to stop."""

    def __init__(self, client: Any, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.keys = client, keys
        self.stop = threading.Event()
        self.failures: list[float] = []  # when each failed operation ended
        self.successes: list[float] = []  # when each operation that succeeded ended
        self.stale = 0

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = self.keys[n % len(self.keys)]
            value = f"v{n}".encode()
            try:
                self.client.set(key, value)
                got = self.client.get(key)
                self.stale += got != value
                self.successes.append(time.monotonic())
                n += 1
            except Exception:
                self.failures.append(time.monotonic())
                time.sleep(0.01)

    def figures(self, killed: float) -> dict[str, Any]:
        """The outage (the longest stretch after the kill with no operation succeeding: a client
        that retries inside its calls, as RedisCluster does, fails few but waits as long), when the
        last error came, how many failed, and the stale reads."""
        done = [killed] + [t for t in self.successes if t > killed]
        return {
            "outage_s": max((b - a for a, b in zip(done, done[1:], strict=False)), default=0.0),
            "last_error_s": (max(self.failures) - killed) if self.failures else 0.0,
            "failed": len(self.failures),
            "ops": len(self.successes),
            "stale": self.stale,
        }


def one_failover(node_timeout_ms: int, keys: int) -> dict[str, Any]:
    import redis
    from redis.cluster import RedisCluster

    with tempfile.TemporaryDirectory() as work:
        cluster = EmbeddedCluster(Path(work), masters=3, replicas=1, node_timeout_ms=node_timeout_ms)
        proxy = ProxyProcess(cluster.url, ["--hot-tier", "cpu"])
        try:
            victim = cluster.node_of(b"fo:0")

            def on_victim(prefix: str) -> list[str]:  # (each writer its own keys)
                names = (f"fo:{prefix}:{i}" for i in range(50 * keys))
                return [k for k in names if cluster.node_of(k.encode()) is victim][:keys]

            through = redis.Redis(port=proxy.port, protocol=2, socket_timeout=5)
            direct = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, protocol=2, socket_timeout=5)
            writers = {"predis": Writer(through, on_victim("p")), "direct": Writer(direct, on_victim("d"))}
            for writer in writers.values():
                writer.start()
            time.sleep(1.0)
            killed = time.monotonic()
            os.kill(victim.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
            time.sleep(node_timeout_ms / 1000 * 3 + 5)  # (past the failover, with writes after it)
            for writer in writers.values():
                writer.stop.set()
                writer.join(30)
        finally:
            proxy.close()
            cluster.close()
    return {name: writer.figures(killed) for name, writer in writers.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.failoverbench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--node-timeout-ms", type=int, default=2_000)
    parser.add_argument("--keys", type=int, default=20)
    args = parser.parse_args(argv)
    runs = []
    for repeat in range(args.repeats):
        run = one_failover(args.node_timeout_ms, args.keys)
        runs.append(run)
        line = "; ".join(
            f"{name}: outage {r['outage_s']:.2f} s, last error {r['last_error_s']:.2f} s, "
            f"{r['failed']} failed, {r['ops']} ops, {r['stale']} stale"
            for name, r in run.items()
        )
        print(f"repeat {repeat + 1}: {line}", flush=True)
    timeout = args.node_timeout_ms / 1000
    print(f"\nnode timeout {timeout:.1f} s, {args.repeats} failovers, medians (range)\n")
    print(
        "| client | outage s (no operation succeeding) | outage / node timeout "
        "| last error, s after the kill | failed operations | stale reads |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("predis", "direct"):
        outages = [r[name]["outage_s"] for r in runs]
        last = [r[name]["last_error_s"] for r in runs]
        failed = [r[name]["failed"] for r in runs]
        stale = sum(r[name]["stale"] for r in runs)
        print(
            f"| {name} | {statistics.median(outages):.2f} ({min(outages):.2f}-{max(outages):.2f}) | "
            f"{statistics.median(outages) / timeout:.2f} | {statistics.median(last):.2f} | "
            f"{statistics.median(failed)} | {stale} |"
        )
    diffs = [r["predis"]["outage_s"] - r["direct"]["outage_s"] for r in runs]
    print(f"\npredis's outage minus direct's, same failover: median {statistics.median(diffs):+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
