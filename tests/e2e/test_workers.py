"""``predis serve --workers N`` (proxy.workers): worker processes on one port under a supervisor.
Connections are spread over the workers, the figures a client reads add up over them, a write
through one worker reaches the others' tiers, a killed worker is replaced while the others'
clients go on, and SIGTERM stops them all. With live prefetching, one engine serves every worker:
what one worker's clients teach it is prefetched into another's tier, the A/B arms' figures add
up over the workers, and a killed engine is replaced and reached again by every worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from accesslog.recorder import read_recorded
from prefetch.engine import ArmSplit
from proxy.embedded import free_port
from tests.helpers import no_retry, wait_for

PREDIS = [sys.executable, "-m", "proxy.cli"]


class Workers:
    def __init__(
        self, upstream: str, count: int = 2, extra: tuple[str, ...] = (), engine: bool = False
    ) -> None:
        self.port = free_port()
        self.count = count
        self.engine = engine
        self.seen_up: set[int] = set()
        # (prefetches however slow the machine: the engine drops no read for its age)
        env = {**os.environ, "PREDIS_PREFETCH_MAX_AGE": "60", "PREDIS_PREFETCH_ENGINE_PRIORITY": "normal"}
        self.proc = subprocess.Popen(
            [*PREDIS, "serve", "--workers", str(count), "--port", str(self.port), "--upstream", upstream,
             "--log-level", "warning", *extra], env=env,
        )  # fmt: skip
        wait_for(self._all_up, timeout=120)

    def _all_up(self) -> bool:
        try:
            report = self.report()
            figures = report["workers"]
            if not self.engine:
                return len(figures) == self.count
            # Every worker connected to the engine, as each worker sees the others (their figures
            # are as they last published them, up to half a second ago).
            if len(figures) == self.count and all(f.get("prefetch_engine_up") == 1 for f in figures):
                self.seen_up.add(report["answered_by"])
            return len(self.seen_up) == self.count
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
        redis.Redis(port=workers.port, socket_connect_timeout=1, **no_retry()).ping()


# --- one prediction engine for every worker


def _arm_b_keys(prefix: str, count: int) -> list[str]:
    """Keys the A/B split (50/50, the default seed) gives to arm B."""
    split = ArmSplit([0.5, 0.5], 0)
    return [k for k in (f"{prefix}:{i}" for i in range(10 * count)) if split.arm_of(k.encode()) == 1][:count]


@pytest.fixture
def predicting(redis_server: Any, direct: redis.Redis) -> Iterator[Workers]:
    running = Workers(redis_server.url, extra=("--ab", "A=none,B=markov"), engine=True)
    yield running
    if running.proc.poll() is None:
        running.close()


def _mine(workers: Workers, client: redis.Redis) -> dict[str, Any]:
    report = workers.report(client)
    (mine,) = [f for f in report["workers"] if f["worker_index"] == report["answered_by"]]
    return mine  # type: ignore[no-any-return]


def test_one_engine_serves_every_worker_and_what_one_teaches_serves_another(
    predicting: Workers, direct: redis.Redis
) -> None:
    by_worker = predicting.on_each_worker(1)
    teacher, learner = by_worker[0][0], by_worker[1][0]
    report = predicting.report(teacher)["workers"]
    (engine,) = {f["prefetch_engine_pid"] for f in report}  # one engine, named by both workers
    assert engine not in {f["worker_pid"] for f in report}
    with open(f"/proc/{engine}/stat") as fh:  # ...the supervisor's child, not a worker's
        assert int(fh.read().rsplit(")", 1)[1].split()[1]) == predicting.proc.pid
    sources, targets = _arm_b_keys("src", 20), _arm_b_keys("dst", 20)
    for key in sources + targets:
        direct.set(key, key)
    for _ in range(3):  # markov learns source -> target from the teacher's worker's client
        for source, target in zip(sources, targets, strict=True):
            teacher.get(source)
            teacher.get(target)
    before = _mine(predicting, learner)["hot_tier_prefetch_fills"]
    for source in sources:  # the learner's worker has never read a target...
        assert learner.get(source) == source.encode()
    # ...and the engine prefetches them into its tier, after reads of that worker's client only.
    wait_for(lambda: _mine(predicting, learner)["hot_tier_prefetch_fills"] >= before + 10, timeout=30)
    hits = _mine(predicting, learner)["hot_tier_prefetched_hits"]
    for target in targets:
        assert learner.get(target) == target.encode()
    wait_for(lambda: _mine(predicting, learner)["hot_tier_prefetched_hits"] >= hits + 10, timeout=10)


def test_the_arms_figures_add_up_over_the_workers(predicting: Workers, direct: redis.Redis) -> None:
    by_worker = predicting.on_each_worker(2)
    clients = [c for cs in by_worker.values() for c in cs]
    clients[0].execute_command("PREDIS", "AB", "RESET")  # (every worker's figures start again)
    keys = [f"ab:{i}" for i in range(50)]
    for key in keys:
        direct.set(key, key)
    reads = 0
    for c in clients:
        for key in keys:
            assert c.get(key) == key.encode()
            reads += 1

    def counted() -> bool:
        # (each worker's figures as it last published them, and the same moment's A/B report)
        report = predicting.report(clients[0])["workers"]
        per_worker = [sum(a["gets"] for a in f["ab_arms"]) for f in report]
        seen[:] = report
        seen_ab.update(json.loads(clients[0].execute_command("PREDIS", "AB", "JSON")))
        merged = sum(a["gets"] for a in seen_ab["arms"])
        return sum(per_worker) == reads and all(per_worker) and merged == reads

    seen: list[dict[str, Any]] = []
    seen_ab: dict[str, Any] = {}
    wait_for(counted, timeout=30)
    workers, ab = seen, seen_ab
    for i, arm in enumerate(ab["arms"]):
        assert arm["gets"] == sum(f["ab_arms"][i]["gets"] for f in workers)
        assert arm["hits"] == sum(f["ab_arms"][i]["hits"] for f in workers)
    split = ArmSplit([0.5, 0.5], 0)
    assert [a["gets"] for a in ab["arms"]] == [
        sum(split.arm_of(k.encode()) == arm for k in keys) * len(clients) for arm in (0, 1)
    ]


def test_a_killed_engine_is_replaced_and_every_worker_reaches_the_new_one(predicting: Workers) -> None:
    by_worker = predicting.on_each_worker(1)
    client = by_worker[0][0]
    (engine,) = {f["prefetch_engine_pid"] for f in predicting.report(client)["workers"]}
    os.kill(engine, signal.SIGKILL)
    for i in range(100):  # served throughout
        assert client.set(f"e{i}", i) and client.get(f"e{i}") == str(i).encode()

    def replaced() -> bool:
        report = predicting.report(client)["workers"]
        pids = {f["prefetch_engine_pid"] for f in report}
        return len(pids) == 1 and engine not in pids and all(f["prefetch_engine_up"] == 1 for f in report)

    wait_for(replaced, timeout=60)
    assert all(f["prefetch_fallback_engine_died"] == 1 for f in predicting.report(client)["workers"])


def test_the_one_engine_records_every_workers_reads(
    redis_server: Any, direct: redis.Redis, tmp_path: Any
) -> None:
    """``--access-log-dir`` with workers: the shared engine records what every worker reads, each
    client apart, in its order; SIGTERM leaves no unwritten read."""
    running = Workers(redis_server.url, extra=("--access-log-dir", str(tmp_path)), engine=True)
    try:
        by_worker = running.on_each_worker(1)
        clients = [by_worker[0][0], by_worker[1][0]]
        for n, client in enumerate(clients):
            for i in range(40):
                client.get(f"user:{n}:item:{i}")
    finally:
        assert running.close() == 0
    table = read_recorded(tmp_path)
    by_client: dict[int, list[str]] = {}
    for key, client in zip(table.column("key").to_pylist(), table.column("client").to_pylist(), strict=True):
        by_client.setdefault(client, []).append(key)
    assert sorted(by_client.values()) == [[f"user:{n}:item:{i}" for i in range(40)] for n in range(2)]


def test_several_engines_each_serve_their_workers(redis_server: Any, direct: redis.Redis) -> None:
    """``--prediction-engines 2`` with two workers: an engine each, and the arms' figures still
    add up over the workers."""
    running = Workers(
        redis_server.url, extra=("--ab", "A=none,B=markov", "--prediction-engines", "2"), engine=True
    )
    try:
        by_worker = running.on_each_worker(1)
        report = running.report(by_worker[0][0])["workers"]
        engines = {f["worker_index"]: f["prefetch_engine_pid"] for f in report}
        assert len(set(engines.values())) == 2 and all(engines.values())
        for n, client in enumerate(c for cs in by_worker.values() for c in cs):
            for i in range(30):
                client.get(f"many:{n}:{i}")

        def counted() -> bool:
            ab = json.loads(by_worker[0][0].execute_command("PREDIS", "AB", "JSON"))
            return sum(a["gets"] for a in ab["arms"]) == 60

        wait_for(counted, timeout=30)
    finally:
        assert running.close() == 0


def _scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_the_metrics_endpoint_gives_the_whole_proxy_and_its_counters_never_go_back(
    redis_server: Any, direct: redis.Redis
) -> None:
    """``--admin PORT`` with workers: every worker listens on the port, and whichever answers a
    scrape gives every worker's figures summed, so a counter never goes back between scrapes."""
    admin = free_port()
    running = Workers(redis_server.url, extra=("--admin", str(admin)))
    try:
        by_worker = running.on_each_worker(2)
        clients = [c for cs in by_worker.values() for c in cs]
        for n, client in enumerate(clients):
            for i in range(25):
                assert client.set(f"adm:{n}:{i}", i)
        wanted = 25 * len(clients)
        wait_for(lambda: _scrape(admin).get("predis_commands_forwarded_total", 0) >= wanted, timeout=30)
        seen = []
        for _ in range(30):  # (scrapes land on either worker)
            samples = _scrape(admin)
            assert samples["predis_workers"] == 2
            seen.append(samples["predis_commands_forwarded_total"])
            clients[len(seen) % len(clients)].set("adm:more", len(seen))
        assert seen == sorted(seen) and seen[0] >= wanted
    finally:
        assert running.close() == 0


def test_the_run_directory_holds_the_whole_proxys_figures(
    redis_server: Any, direct: redis.Redis, tmp_path: Any
) -> None:
    """``--run-dir`` with workers: one worker writes it, a line a second, with every worker's
    A/B figures summed."""
    running = Workers(
        redis_server.url, extra=("--ab", "A=none,B=markov", "--run-dir", str(tmp_path)), engine=True
    )
    try:
        by_worker = running.on_each_worker(1)
        clients = [by_worker[0][0], by_worker[1][0]]
        clients[0].execute_command("PREDIS", "AB", "RESET")
        for n, client in enumerate(clients):
            for i in range(40):
                client.get(f"run:{n}:{i}")

        def recorded() -> bool:
            lines = (tmp_path / "history.jsonl").read_text().splitlines()
            last = json.loads(lines[-1]) if lines else {"arms": {}}
            return sum(a["gets"] for a in last["arms"].values()) == 80

        wait_for(recorded, timeout=30)
    finally:
        assert running.close() == 0
    times = [json.loads(line)["t"] for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert times == sorted(times) and len(set(times)) == len(times)  # (one writer)
    assert (tmp_path / "latency.json").exists()
