"""``predis serve --workers N`` (proxy.workers): worker processes on one port under a supervisor.
Connections are spread over the workers, the figures a client reads add up over them, a write
through one worker reaches the others' tiers, a killed worker is replaced while the others'
clients go on, and SIGTERM stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from proxy.embedded import free_port
from tests.helpers import wait_for

PREDIS = [sys.executable, "-m", "proxy.cli"]


class Workers:
    def __init__(self, upstream: str, count: int = 2) -> None:
        self.port = free_port()
        self.count = count
        self.proc = subprocess.Popen(
            [*PREDIS, "serve", "--workers", str(count), "--port", str(self.port), "--upstream", upstream,
             "--log-level", "warning"]
        )  # fmt: skip
        wait_for(self._all_up, timeout=60)

    def _all_up(self) -> bool:
        try:
            return len(self.report()["workers"]) == self.count
        except redis.RedisError:
            assert self.proc.poll() is None, "predis serve --workers exited"
            return False

    def client(self) -> redis.Redis:
        """A client with one connection of its own (single_connection_client)."""
        return redis.Redis(port=self.port, protocol=2, socket_timeout=10, single_connection_client=True)

    def report(self, client: redis.Redis | None = None) -> dict[str, Any]:
        c = client or self.client()
        return json.loads(c.execute_command("PREDIS", "STATS", "WORKERS"))  # type: ignore[no-any-return]

    def on_each_worker(self, wanted: int = 2) -> dict[int, list[redis.Redis]]:
        """Clients, grouped by the worker that took their connection, ``wanted`` on each."""
        by_worker: dict[int, list[redis.Redis]] = {i: [] for i in range(self.count)}
        for _ in range(400):
            if all(len(v) >= wanted for v in by_worker.values()):
                return by_worker
            c = self.client()
            who = self.report(c)["answered_by"]
            if len(by_worker[who]) < wanted:
                by_worker[who].append(c)
            else:
                c.close()
        raise AssertionError(
            f"connections did not reach every worker: {[len(v) for v in by_worker.values()]}"
        )

    def close(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def workers(redis_server: Any, direct: redis.Redis) -> Iterator[Workers]:
    running = Workers(redis_server.url)
    yield running
    if running.proc.poll() is None:
        running.close()


def test_connections_spread_over_the_workers_and_the_figures_add_up(workers: Workers) -> None:
    by_worker = workers.on_each_worker(3)
    clients = [c for cs in by_worker.values() for c in cs]
    for i, c in enumerate(clients):
        for j in range(10):
            assert c.set(f"k{i}:{j}", j)
    per_worker = {w: 10 * len(cs) for w, cs in by_worker.items()}

    def added_up() -> bool:
        report = workers.report(clients[0])
        forwarded = {f["worker_index"]: f["commands_forwarded"] for f in report["workers"]}
        return all(forwarded[w] >= n for w, n in per_worker.items())

    wait_for(added_up, timeout=20)  # (each worker publishes its figures twice a second)
    total = json.loads(clients[0].execute_command("PREDIS", "STATS", "JSON"))
    assert total["workers"] == 2
    report = workers.report(clients[0])
    assert total["commands_forwarded"] >= sum(f["commands_forwarded"] for f in report["workers"]) - 50
    assert total["commands_forwarded"] >= 10 * len(clients)
    assert total["connected_clients"] >= len(clients)


def test_a_write_through_one_worker_reaches_the_other_workers_tier(
    workers: Workers, direct: redis.Redis
) -> None:
    by_worker = workers.on_each_worker(1)
    writer, reader = by_worker[0][0], by_worker[1][0]

    def own_hits() -> int:
        report = workers.report(reader)
        (mine,) = [f for f in report["workers"] if f["worker_index"] == report["answered_by"]]
        return mine["hot_tier_hits"]  # type: ignore[no-any-return]

    stale = 0
    for n in range(100):
        old, new = f"v{n}".encode(), f"w{n}".encode()
        direct.set("shared", old)
        # The reader's worker holds the key in its tier: a read of it was served from there.
        hits = own_hits()
        wait_for(lambda old=old, hits=hits: reader.get("shared") == old and own_hits() > hits, timeout=5)  # type: ignore[misc]
        writer.set("shared", new)  # through the other worker, acknowledged
        stale += reader.get("shared") != new
    assert stale == 0
    for n in range(20):  # (and a FLUSHALL through the writer's worker)
        direct.set("shared", f"f{n}")
        hits = own_hits()
        wait_for(
            lambda n=n, hits=hits: reader.get("shared") == f"f{n}".encode() and own_hits() > hits, timeout=5
        )  # type: ignore[misc]
        writer.flushall()
        stale += reader.get("shared") is not None
    assert stale == 0


def test_a_killed_worker_is_replaced_and_the_other_workers_clients_go_on(workers: Workers) -> None:
    by_worker = workers.on_each_worker(1)
    survivor = by_worker[0][0]
    pids = {f["worker_index"]: f["worker_pid"] for f in workers.report(survivor)["workers"]}
    os.kill(pids[1], signal.SIGKILL)
    for i in range(200):  # the survivor's client is served throughout
        assert survivor.set(f"s{i}", i) and survivor.get(f"s{i}") == str(i).encode()

    def replaced() -> bool:
        now = {f["worker_index"]: f["worker_pid"] for f in workers.report(survivor)["workers"]}
        return now.get(1) not in (None, pids[1])

    wait_for(replaced, timeout=30)
    workers.on_each_worker(1)  # (new connections reach the new worker)
    assert workers.proc.poll() is None


def test_sigterm_stops_every_worker(workers: Workers) -> None:
    pids = [f["worker_pid"] for f in workers.report()["workers"]]
    assert workers.close() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=workers.port, socket_connect_timeout=1).ping()
