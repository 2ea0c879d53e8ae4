"""Predis in front of a real Redis Cluster (3 masters, 3 replicas, started by the fixture): clients
speak plain single-node Redis to the proxy, which routes every keyed command to its slot's master,
splits the multi-key commands that span slots and merges their replies, answers CROSSSLOT where
Redis's semantics allow no split, keeps its hot tier coherent with a tracking redirect on every
node, and rides a live reshard and a master's failover."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.cluster import key_slot
from proxy.embedded import EmbeddedCluster
from proxy.resp import encode_command
from tests.helpers import exchange, read_frames, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    local = EmbeddedCluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1)
    try:
        yield local
    finally:
        local.close()


@pytest.fixture
def direct(cluster: EmbeddedCluster) -> Iterator[redis.RedisCluster]:
    client = cluster_client(cluster)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    yield client
    client.close()


def cluster_client(cluster: EmbeddedCluster) -> redis.RedisCluster:
    """A cluster-aware client (redis-py's), straight to the nodes."""
    return redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, socket_timeout=10)


def raw(proxy: Any, *args: bytes | str) -> bytes:
    """One command's reply frame as the proxy sent it."""
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.settimeout(10)
        s.sendall(encode_command(list(args)))
        return read_frames(s, 1)[0]


def masters_holding(cluster: EmbeddedCluster, keys: list[str]) -> set[int]:
    return {cluster.node_of(k.encode()).port for k in keys}


def test_every_command_family_reaches_its_slot_s_master(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    proxy = make_proxy(cluster.url, hot_tier="off")
    client = proxy.client()
    keys = [f"key:{i}" for i in range(60)]
    assert len(masters_holding(cluster, keys)) == 3  # (the keys span every master)
    for i, key in enumerate(keys):
        client.set(f"s:{key}", i)
        client.hset(f"h:{key}", mapping={"a": i, "b": "x"})
        client.rpush(f"l:{key}", i, i + 1)
        client.sadd(f"set:{key}", "m1", "m2")
        client.zadd(f"z:{key}", {"m": i})
        client.incrby(f"n:{key}", i)
        client.set(f"e:{key}", "v", px=60_000)
    for i, key in enumerate(keys):  # each read back by a cluster-aware client, straight from its node
        assert direct.get(f"s:{key}") == str(i).encode()
        assert direct.hgetall(f"h:{key}") == {b"a": str(i).encode(), b"b": b"x"}
        assert direct.lrange(f"l:{key}", 0, -1) == [str(i).encode(), str(i + 1).encode()]
        assert direct.smembers(f"set:{key}") == {b"m1", b"m2"}
        assert direct.zscore(f"z:{key}", "m") == i
        assert direct.get(f"n:{key}") == str(i).encode()
        assert 0 < direct.pttl(f"e:{key}") <= 60_000
        # ...and through the proxy, reads of every family.
        assert client.hget(f"h:{key}", "a") == str(i).encode()
        assert client.llen(f"l:{key}") == 2 and client.scard(f"set:{key}") == 2
        assert client.zscore(f"z:{key}", "m") == i and client.ttl(f"e:{key}") > 0
    # Keyless commands: one node answers, or every master where the answer is the cluster's.
    assert client.ping() is True and client.echo("hi") == b"hi"
    per_master = [redis.Redis(port=n.port).dbsize() for n in cluster.masters()]
    assert client.dbsize() == 7 * len(keys) == sum(per_master)
    assert sorted(client.keys("s:*")) == sorted(f"s:{k}".encode() for k in keys)
    # SCAN walks every master in turn behind one cursor: every key once, with MATCH, COUNT, TYPE.
    scanned = list(client.scan_iter(match="s:*", count=7))
    assert sorted(scanned) == sorted(f"s:{k}".encode() for k in keys)
    assert sorted(client.scan_iter(_type="hash", count=50)) == sorted(f"h:{k}".encode() for k in keys)
    assert raw(proxy, "SCAN", "x") == b"-ERR invalid cursor\r\n"  # (Redis's own, from one node)
    client.flushall()
    assert all(redis.Redis(port=n.port).dbsize() == 0 for n in cluster.masters())
    assert proxy.server.stats.snapshot()["upstream_errors"] == 0


def test_multi_key_commands_split_by_slot_and_merge(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    proxy = make_proxy(cluster.url, hot_tier="off")
    client = proxy.client()
    keys = [f"mk:{i}" for i in range(40)]
    assert len(masters_holding(cluster, keys)) == 3
    assert client.mset({k: f"v{i}" for i, k in enumerate(keys)}) is True
    missing = ["mk:none:1", "mk:none:2"]
    asked = keys[::-1] + missing + keys[:3]  # (order, repeats and absent keys kept)
    assert client.mget(asked) == [direct.get(k) for k in asked]
    assert client.exists(*keys, *missing, keys[0]) == len(keys) + 1
    assert client.touch(*keys[:10]) == 10
    assert client.delete(*keys[:10], *missing) == 10
    assert client.unlink(*keys[10:20]) == 10
    assert [direct.get(k) for k in keys[:20]] == [None] * 20
    assert client.mget(keys[20:]) == [f"v{i}".encode() for i in range(20, 40)]
    # In RESP3 too (a merged MGET's nulls are RESP3's).
    client3 = redis.Redis(port=proxy.port, protocol=3, socket_timeout=10)
    assert client3.mget(["mk:none:3", keys[25], keys[1]]) == [None, b"v25", None]
    # Commands whose keys cannot be split: Redis's own CROSSSLOT error, word for word.
    a, b = (
        keys[20],
        next(k for k in keys[21:] if cluster.node_of(k.encode()) != cluster.node_of(keys[20].encode())),
    )
    for command in (
        ("RENAME", a, b),
        ("SUNION", a, b),
        ("BLPOP", a, b, "1"),
        ("EVAL", "return 1", "2", a, b),
    ):
        assert raw(proxy, *command) == b"-CROSSSLOT Keys in request don't hash to the same slot\r\n", command
    # Hash tags put keys in one slot: then any multi-key command runs.
    client.rpush("{tag}:src", 1, 2)
    assert client.rename("{tag}:src", "{tag}:dst") is True and direct.lrange("{tag}:dst", 0, -1) == [
        b"1",
        b"2",
    ]


def test_transactions_scripts_blocking_and_pubsub(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    proxy = make_proxy(cluster.url, hot_tier="off")
    client = proxy.client()
    # MULTI/EXEC on hash-tagged keys goes whole to their node.
    pipe = client.pipeline(transaction=True)
    pipe.set("{acct:7}:balance", 100).incrby("{acct:7}:balance", 5).get("{acct:7}:balance")
    assert pipe.execute() == [True, 105, b"105"]
    # WATCH: a write by someone else in between aborts the transaction.
    with client.pipeline(transaction=True) as pipe:
        pipe.watch("{acct:7}:balance")
        direct.set("{acct:7}:balance", 1)
        pipe.multi()
        pipe.set("{acct:7}:balance", 2)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert direct.get("{acct:7}:balance") == b"1"
    # Scripts with their keys, on the keys' node.
    assert client.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "{acct:7}:balance", 41) == 42
    # A blocking pop waits on the key's node until another client pushes there.
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(proxy.client().blpop(["queue:1"], timeout=10)))
    waiter.start()
    time.sleep(0.3)
    direct.rpush("queue:1", "job")
    waiter.join(15)
    assert got == [(b"queue:1", b"job")]
    # Pub/sub: a message published on any node reaches a subscriber through the proxy.
    sub = proxy.client().pubsub()
    sub.subscribe("news")
    wait_for(lambda: sub.get_message(timeout=0.1) is not None)  # (the subscribe confirmation)
    for node in cluster.masters():
        redis.Redis(port=node.port).publish("news", f"from {node.port}")
    messages = []
    wait_for(
        lambda: (m := sub.get_message(timeout=0.1)) is None or messages.append(m) or len(messages) == 3, 10
    )
    assert sorted(m["data"] for m in messages) == sorted(f"from {n.port}".encode() for n in cluster.masters())
    sub.close()


def test_connection_state_inside_a_transaction_is_refused_and_aborts_it(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    """A HELLO, AUTH or CLIENT SETNAME inside MULTI would run at one node only, leaving the
    connection half RESP3 (or half logged in): the proxy refuses it when queued, as Redis refuses
    a bad command, so EXEC aborts and nothing of the transaction runs."""
    keys = []
    for i in range(100):  # a hash on every master
        if len(keys) < 3 and cluster.node_of(f"h{i}".encode()).port not in {
            cluster.node_of(k.encode()).port for k in keys
        }:
            keys.append(f"h{i}")
    for k in keys:
        direct.hset(k, "a", "1")
    proxy = make_proxy(cluster.url, hot_tier="off")
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.settimeout(10)
        run = partial(exchange, s)
        for queued in (["HELLO", "3"], ["CLIENT", "SETNAME", "n"], ["AUTH", "default", "x"]):
            for before in ([], ["SET", f"{{{keys[0]}}}:t", "ran"]):  # (no node chosen yet, or one)
                commands = [
                    ["MULTI"],
                    *([before] if before else []),
                    queued,
                    ["HINCRBY", keys[0], "a", "1"],
                    ["EXEC"],
                ]
                got = run(*commands)
                assert got[-3].startswith(b"-ERR Predis: "), got
                assert got[-1].startswith(b"-EXECABORT"), got
        assert direct.hget(keys[0], "a") == b"1" and direct.get(f"{{{keys[0]}}}:t") is None
        assert run(*[["HGETALL", k] for k in keys]) == [b"*2\r\n$1\r\na\r\n$1\r\n1\r\n"] * 3
        assert run(["CLIENT", "GETNAME"]) == [b"$-1\r\n"]
        # Outside a transaction the state reaches every node's link.
        assert run(["HELLO", "3"])[0].startswith(b"%")
        assert run(*[["HGETALL", k] for k in keys]) == [b"%1\r\n$1\r\na\r\n$1\r\n1\r\n"] * 3
        # A transaction without them runs.
        assert run(["MULTI"], ["HINCRBY", keys[0], "a", "1"], ["EXEC"])[2] == b"*1\r\n:2\r\n"


def test_the_tier_stays_coherent_with_writes_on_every_node(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    proxy = make_proxy(cluster.url)
    wait_for(lambda: proxy.server.tier.active, 30)
    client = proxy.client()
    keys = [f"hot:{i}" for i in range(90)]
    for k in keys:
        direct.set(k, "old")
    for _ in range(3):
        assert client.mget(keys) == [b"old"] * len(keys)
    wait_for(lambda: all((0, k.encode()) in proxy.server.tier.entries for k in keys))
    hits = proxy.server.stats.snapshot()["hot_tier_hits"]
    assert (
        client.mget(keys) == [b"old"] * len(keys)
        and proxy.server.stats.snapshot()["hot_tier_hits"] >= hits + 90
    )
    # Writes straight to each node (not through the proxy): each node's invalidations reach the tier.
    for k in keys:
        direct.set(k, "new")
    wait_for(lambda: not any((0, k.encode()) in proxy.server.tier.entries for k in keys), 10)
    assert client.mget(keys) == [b"new"] * len(keys)
    assert proxy.server.stats.snapshot()["hot_tier_invalidations_tracking"] >= len(keys)


def test_replica_reads_when_asked_and_never_for_the_tier_s_fills(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    keys = [f"rr:{i}" for i in range(30)]
    for k in keys:
        direct.set(k, f"v-{k}")
    for master in cluster.masters():  # (every write on the replicas before the reads)
        redis.Redis(port=master.port).execute_command("WAIT", 1, 5000)

    def gets(nodes: list[Any], command: str = "get") -> int:
        stats = [redis.Redis(port=n.port).info("commandstats") for n in nodes]
        return sum(int(s.get(f"cmdstat_{command}", {}).get("calls", 0)) for s in stats)

    replicas = [n for n in cluster.nodes if n not in cluster.masters()]
    for replica_reads in (False, True):
        proxy = make_proxy(cluster.url, hot_tier="off", cluster_replica_reads=replica_reads)
        client = proxy.client()
        before_m, before_r = gets(cluster.masters()), gets(replicas)
        assert [client.get(k) for k in keys] == [f"v-{k}".encode() for k in keys]
        on_masters, on_replicas = gets(cluster.masters()) - before_m, gets(replicas) - before_r
        assert (on_masters, on_replicas) == ((0, len(keys)) if replica_reads else (len(keys), 0))
        client.set(keys[0], "written")  # (writes always go to the master)
        assert direct.get(keys[0]) == b"written"
        direct.set(keys[0], f"v-{keys[0]}")
        proxy.close()
    # With the tier on, its fills (tracked) read the masters even then.
    proxy = make_proxy(cluster.url, cluster_replica_reads=True)
    wait_for(lambda: proxy.server.tier.active, 30)
    before_fills = proxy.server.stats.snapshot()["hot_tier_demand_fills"]
    fills_m, fills_r = gets(cluster.masters(), "mget"), gets(replicas, "mget")
    client = proxy.client()
    for k in keys:
        assert client.get(k) == f"v-{k}".encode()  # (a miss: read from a replica, filled from the master)
    wait_for(lambda: proxy.server.stats.snapshot()["hot_tier_demand_fills"] >= before_fills + len(keys))
    assert gets(cluster.masters(), "mget") > fills_m and gets(replicas, "mget") == fills_r
    with pytest.raises(Exception, match="redis-cluster"):
        make_proxy("redis://127.0.0.1:1", cluster_replica_reads=True)


def test_workers_over_a_cluster_serve_no_stale_read(
    cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    """``--workers 2`` in front of the cluster: a write through one worker, then a read of the key
    through each worker's clients, again and again: every read the value just written."""
    from tests.e2e.test_workers import Workers

    workers = Workers(cluster.url, 2)
    try:
        by_worker = workers.on_each_worker(2)
        clients = [c for group in by_worker.values() for c in group]
        stale = 0
        for n in range(100):
            key = f"wk:{n % 10}"
            clients[n % len(clients)].set(key, n)
            stale += sum(c.get(key) != str(n).encode() for c in clients)
        assert stale == 0 and direct.get("wk:9") == b"99"
    finally:
        workers.close()


def _node_id(port: int) -> str:
    return redis.Redis(port=port).execute_command("CLUSTER", "MYID").decode()  # type: ignore[no-any-return]


class Load:
    """Clients through the proxy, each owning its keys: write a new value, read it back, again
    and again; any error, and any read that is not the value just acknowledged, is counted. One
    more client pipelines: 8 writes of its keys, then 8 reads of them, in one pipeline. One more
    runs transactions on two keys of a slot (a counter and a value): a transaction's replies that
    are not the counter's next value and the value it set count as stale (one run twice, or not
    at all, would show)."""

    def __init__(self, port: int, clients: int = 4, keys: int = 50, tags: list[str] | None = None) -> None:
        self.errors: list[str] = []
        self.stale = 0
        self.ops = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(port, c, keys), daemon=True) for c in range(clients)
        ]
        self.threads.append(threading.Thread(target=self._pipelined, args=(port, keys), daemon=True))
        tags = tags or [str(i) for i in range(keys)]
        self.threads.append(threading.Thread(target=self._transactions, args=(port, tags), daemon=True))
        self.transactions = 0
        for t in self.threads:
            t.start()

    def _pipelined(self, port: int, keys: int) -> None:
        client = redis.Redis(port=port, socket_timeout=20)
        n = 0
        while not self.stop.is_set():
            names = [f"piped:{(n + i) % keys}" for i in range(8)]
            pipe = client.pipeline(transaction=False)
            for i, name in enumerate(names):
                pipe.set(name, n + i)
            for name in names:
                pipe.get(name)
            try:
                replies = pipe.execute()
                self.stale += sum(got != str(n + i).encode() for i, got in enumerate(replies[8:]))
            except redis.RedisError as exc:
                self.errors.append(str(exc))
            n += 8
            self.ops += 16

    def _transactions(self, port: int, tags: list[str]) -> None:
        client = redis.Redis(port=port, socket_timeout=20)
        counts = dict.fromkeys(tags, 0)
        n = 0
        while not self.stop.is_set():
            tag = tags[n % len(tags)]
            pipe = client.pipeline(transaction=True)
            pipe.incr(f"txload:{{{tag}}}:count").set(f"txload:{{{tag}}}:last", n).get(
                f"txload:{{{tag}}}:last"
            )
            try:
                replies = pipe.execute()
                counts[tag] += 1
                self.stale += replies != [counts[tag], True, str(n).encode()]
                self.transactions += 1
            except redis.RedisError as exc:
                self.errors.append(str(exc))
            n += 1
            self.ops += 3

    def _run(self, port: int, c: int, keys: int) -> None:
        client = redis.Redis(port=port, socket_timeout=20)
        n = 0
        while not self.stop.is_set():
            key = f"load:{c}:{n % keys}"
            try:
                client.set(key, n)
                if client.get(key) != str(n).encode():
                    self.stale += 1
            except redis.RedisError as exc:
                self.errors.append(str(exc))
            n += 1
            self.ops += 1

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_a_live_reshard_under_load_fails_no_request(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    proxy = make_proxy(cluster.url)
    wait_for(lambda: proxy.server.tier.active, 30)
    source, target = cluster.masters()[:2]
    # The transactions' keys are in slots the reshard moves (the source's first 1,500, as redis-cli
    # takes them), each with 300 more keys so that its migration lasts, and some transactions run
    # while their slot is migrating.
    moving = set(
        sorted(
            slot
            for start, end, *nodes in cluster.ask(source, "CLUSTER", "SLOTS")
            if int(nodes[0][1]) == source.port
            for slot in range(start, end + 1)
        )[:1500]
    )
    tags = [tag for tag in (f"t{i}" for i in range(5000)) if key_slot(tag.encode()) in moving][:50]
    for tag in tags:
        direct.mset({f"fill:{{{tag}}}:{i}": "x" for i in range(300)})
    load = Load(proxy.port, tags=tags)
    try:
        time.sleep(0.5)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "reshard",
                f"127.0.0.1:{source.port}",
                "--cluster-from",
                _node_id(source.port),
                "--cluster-to",
                _node_id(target.port),
                "--cluster-slots",
                "1500",
                "--cluster-yes",
                "--cluster-pipeline",
                "10",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        time.sleep(0.5)
    finally:
        load.finish()
    assert load.ops > 100 and load.errors == [] and load.stale == 0, (load.ops, load.errors[:5], load.stale)
    assert load.transactions > 10
    assert cluster_client(cluster).get("load:0:0") is not None
    topology = proxy.server.opener.topology
    assert topology.redirects + topology.asks > 0  # (the proxy followed them, the clients never saw one)
    print(
        f"\nreshard of 1,500 slots under load: {load.ops} operations ({load.transactions} transactions), "
        f"{len(load.errors)} errors, "
        f"{load.stale} stale reads; {topology.redirects} MOVED and {topology.asks} ASK followed, "
        f"{topology.deferred} transactions deferred by a migrating slot, "
        f"{topology.refreshes} map refreshes"
    )


def test_a_master_killed_its_replica_promoted_the_proxy_recovers(make_proxy: Any, tmp_path: Path) -> None:
    local = EmbeddedCluster(tmp_path, masters=3, replicas=1, node_timeout_ms=1_000)
    try:
        proxy = make_proxy(local.url)
        wait_for(lambda: proxy.server.tier.active, 30)
        client = proxy.client()
        keys = [f"fo:{i}" for i in range(60)]
        client.mset({k: "v1" for k in keys})
        assert client.mget(keys) == [b"v1"] * len(keys)
        victim = local.node_of(keys[0].encode())
        os.kill(victim.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        errors = 0

        def all_served() -> bool:
            nonlocal errors
            try:
                client.mset({k: "v2" for k in keys})
                return client.mget(keys) == [b"v2"] * len(keys)
            except redis.RedisError:
                errors += 1
                time.sleep(0.1)
                return False

        # Errors while the cluster elects the replica (its own node timeout and election), then
        # every key served again by itself: the proxy refreshed its map on the lost connections.
        wait_for(all_served, 30)
        # Once recovered, it stays so: no error in the next hundred rounds of writes and reads.
        for n in range(100):
            client.set(keys[n % len(keys)], n)
            assert client.get(keys[n % len(keys)]) == str(n).encode()
    finally:
        local.close()


def _move_slot(cluster: EmbeddedCluster, slot: int, target: Any) -> None:
    """Move a slot (its keys migrated) to ``target``, told to every master, as ``redis-cli
    --cluster reshard`` does."""
    owner = cluster.node_of_slot(slot)
    target_id, owner_id = _node_id(target.port), _node_id(owner.port)
    assert cluster.ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", owner_id) == b"OK"
    assert cluster.ask(owner, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id) == b"OK"
    keys = cluster.ask(owner, "CLUSTER", "GETKEYSINSLOT", str(slot), "1000")
    if keys:
        args = [
            "MIGRATE",
            "127.0.0.1",
            str(target.port),
            "",
            "0",
            "5000",
            "KEYS",
            *(k.decode() for k in keys),
        ]
        assert cluster.ask(owner, *args) == b"OK"
    for node in [target, owner, *[m for m in cluster.masters() if m.port not in (target.port, owner.port)]]:
        assert cluster.ask(node, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id) == b"OK"


def test_a_transaction_whose_slot_moved_is_moved_whole_and_the_client_sees_no_redirect(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    """The proxy's slot map is stale (no health check refreshes it here) and a transaction goes to
    the slot's old master, which answers MOVED inside MULTI. Without WATCH the proxy moves the whole
    transaction to the new master, whose EXEC the client gets; with WATCH (whose watch the old node
    held) EXEC answers as when a watched key changed, and the client's retry runs at the new one."""
    proxy = make_proxy(cluster.url, hot_tier="off", health_interval=3600.0)
    client = proxy.client()
    assert client.set("tx:warm", "1")  # (the map is read)
    topology = proxy.server.opener.topology

    def others(slot: int) -> list[Any]:
        return [m for m in cluster.masters() if m.port != cluster.node_of_slot(slot).port]

    slot = int(cluster.ask(cluster.nodes[0], "CLUSTER", "KEYSLOT", "tx:{m1}"))
    _move_slot(cluster, slot, others(slot)[0])
    moved = topology.redirects
    pipe = client.pipeline(transaction=True)  # MULTI ... EXEC in one write
    pipe.set("tx:{m1}:a", "x").incr("tx:{m1}:n").get("tx:{m1}:a")
    assert pipe.execute() == [True, 1, b"x"]
    assert topology.redirects > moved
    _move_slot(cluster, slot, others(slot)[0])
    one = proxy.client()  # one command at a time
    assert one.execute_command("MULTI") == b"OK"
    assert one.execute_command("ECHO", "hi") == b"QUEUED"  # (no key yet: answered here, sent later)
    assert one.execute_command("INCR", "tx:{m1}:n") == b"QUEUED"
    assert one.execute_command("EXEC") == [b"hi", 2]
    assert direct.get("tx:{m1}:n") == b"2" and direct.get("tx:{m1}:a") == b"x"

    key = "tx:{m2}:w"
    slot = int(cluster.ask(cluster.nodes[0], "CLUSTER", "KEYSLOT", key))
    assert direct.set(key, "0")
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(key)  # (to the slot's master: the map is current)
        assert pipe.get(key) == b"0"
        _move_slot(cluster, slot, others(slot)[0])
        pipe.multi()
        pipe.set(key, "1")
        with pytest.raises(redis.WatchError):  # not MOVED, not EXECABORT
            pipe.execute()

    def update(p: Any) -> None:
        current = p.get(key)
        p.multi()
        p.set(key, int(current) + 1)

    client.transaction(update, key)  # (redis-py's retry loop: it runs at the new master)
    assert direct.get(key) == b"1"


def test_a_transaction_on_a_migrating_slot_runs_whole_where_its_keys_all_are(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    """A slot half migrated (IMPORTING at one master, MIGRATING at its owner). A transaction on one
    key already gone from the owner gets ASK: the proxy runs it whole at the importing node
    (ASKING, whose flag lasts to EXEC inside MULTI). One on several keys, some at each node, can
    run nowhere until the migration ends (the importing node answers TRYAGAIN): the proxy answers
    QUEUED, holds EXEC (and what the client sends after it) and runs it again until it can; the
    client sees no redirect either way. With WATCH (held by the owner) EXEC answers as when a
    watched key changed."""
    proxy = make_proxy(cluster.url, hot_tier="off", health_interval=3600.0)
    client = proxy.client()
    slot = int(cluster.ask(cluster.nodes[0], "CLUSTER", "KEYSLOT", "tx:{a1}"))
    owner = cluster.node_of_slot(slot)
    target = next(m for m in cluster.masters() if m.port != owner.port)
    assert direct.set("tx:{a1}:old", "5") and client.get("tx:{a1}:old") == b"5"  # (the map is read)
    assert cluster.ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", _node_id(owner.port)) == b"OK"
    assert cluster.ask(owner, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", _node_id(target.port)) == b"OK"
    asks = proxy.server.opener.topology.asks
    finisher: threading.Thread | None = None
    try:
        pipe = client.pipeline(transaction=True)  # a key not at the owner: ASK for each command
        pipe.set("tx:{a1}:new", "1").incr("tx:{a1}:new").get("tx:{a1}:new")
        assert pipe.execute() == [True, 2, b"2"]
        assert proxy.server.opener.topology.asks > asks
        at_target = redis.Redis(port=target.port)
        at_target.execute_command("ASKING")
        assert at_target.get("tx:{a1}:new") == b"2"  # (it ran at the importing node...)
        assert str(cluster.ask(owner, "GET", "tx:{a1}:new")).startswith("ASK")  # (...not at the owner)

        # What the client pipelines after EXEC sees the transaction's writes.
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.settimeout(10)
            s.sendall(
                b"".join(
                    encode_command(c)
                    for c in (["MULTI"], ["SET", "tx:{a1}:p", "v"], ["EXEC"], ["GET", "tx:{a1}:p"])
                )
            )
            assert read_frames(s, 4) == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n+OK\r\n", b"$1\r\nv\r\n"]

        # WATCH at the owner, a key of the transaction gone from it: aborted, not redirected.
        with client.pipeline(transaction=True) as watched:
            watched.watch("tx:{a1}:old")
            watched.multi()
            watched.set("tx:{a1}:new", "y")
            with pytest.raises(redis.WatchError):
                watched.execute()
        # WATCH of a key gone from the owner: ASK takes the watch to the importing node, and the
        # transaction follows it there (ASKING, then MULTI).
        with client.pipeline(transaction=True) as watched:
            watched.watch("tx:{a1}:new")
            assert watched.get("tx:{a1}:new") == b"2"
            watched.multi()
            watched.set("tx:{a1}:new", "5")
            assert watched.execute() == [True]
        at_target.execute_command("ASKING")
        assert at_target.get("tx:{a1}:new") == b"5"
        assert client.incr("tx:{a1}:new", -3) == 2  # (back to what the test expects below)

        # A key at each node: held until the migration ends (in 0.5 s), then run at the target.
        def finish() -> None:
            time.sleep(0.5)
            assert (
                cluster.ask(
                    owner, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", "tx:{a1}:old"
                )
                == b"OK"
            )
            for node in cluster.masters():
                assert (
                    cluster.ask(node, "CLUSTER", "SETSLOT", str(slot), "NODE", _node_id(target.port)) == b"OK"
                )

        one = proxy.client()  # one command at a time
        assert one.execute_command("MULTI") == b"OK"
        assert one.execute_command("INCR", "tx:{a1}:old") == b"QUEUED"  # (at the owner)
        assert one.execute_command("INCR", "tx:{a1}:new") == b"QUEUED"  # (ASK: answered here)
        finisher = threading.Thread(target=finish)
        started = time.monotonic()
        finisher.start()
        assert one.execute_command("EXEC") == [6, 3]
        assert time.monotonic() - started >= 0.5  # (it waited for the migration)
        assert one.get("tx:{a1}:old") == b"6"
    finally:
        if finisher is not None:
            finisher.join()
        else:
            for node in cluster.masters():
                cluster.ask(node, "CLUSTER", "SETSLOT", str(slot), "STABLE")
    assert direct.get("tx:{a1}:old") == b"6" and direct.get("tx:{a1}:new") == b"3"


def test_a_transaction_split_across_a_migration_that_never_ends_gets_tryagain(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    """The proxy runs a transaction split across a migrating slot again for half its command
    timeout, then answers EXEC with TRYAGAIN (what Redis answers a multi-key command there); so
    it does a multi-key command refused with TRYAGAIN."""
    proxy = make_proxy(cluster.url, hot_tier="off", health_interval=3600.0, command_timeout=1.0)
    client = proxy.client()
    slot = int(cluster.ask(cluster.nodes[0], "CLUSTER", "KEYSLOT", "tx:{a2}"))
    owner = cluster.node_of_slot(slot)
    target = next(m for m in cluster.masters() if m.port != owner.port)
    assert direct.set("tx:{a2}:here", "1") and client.get("tx:{a2}:here") == b"1"
    assert cluster.ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", _node_id(owner.port)) == b"OK"
    assert cluster.ask(owner, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", _node_id(target.port)) == b"OK"
    try:
        pipe = client.pipeline(transaction=True)
        pipe.incr("tx:{a2}:here").incr("tx:{a2}:gone")
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TryAgainError):  # (redis-py reads TRYAGAIN so)
            pipe.execute()
        assert time.monotonic() - started >= 0.5  # (it kept trying for half the command timeout)
        assert client.get("tx:{a2}:here") == b"1"  # (nothing of it ran; the connection still serves)
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TryAgainError):
            client.mget("tx:{a2}:here", "tx:{a2}:gone")
        assert time.monotonic() - started >= 0.5
    finally:
        for node in cluster.masters():
            cluster.ask(node, "CLUSTER", "SETSLOT", str(slot), "STABLE")


def test_a_multi_key_command_refused_with_tryagain_is_sent_again_until_its_slot_settles(
    make_proxy: Any, cluster: EmbeddedCluster, direct: redis.RedisCluster
) -> None:
    """A multi-key command on a migrating slot, one key moved and one not: the owner answers
    TRYAGAIN. The proxy sends it again (pausing) until the migration ends, and what the client
    sends after it waits for it: the client sees neither TRYAGAIN nor a redirect."""
    proxy = make_proxy(cluster.url, hot_tier="off", health_interval=3600.0)
    client = proxy.client()
    here, gone = "ta:{a4}:here", "ta:{a4}:gone"
    slot = int(cluster.ask(cluster.nodes[0], "CLUSTER", "KEYSLOT", here))
    owner = cluster.node_of_slot(slot)
    target = next(m for m in cluster.masters() if m.port != owner.port)
    assert direct.mset({here: "1", gone: "2"}) and client.get(here) == b"1"  # (the map is read)
    assert cluster.ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", _node_id(owner.port)) == b"OK"
    assert cluster.ask(owner, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", _node_id(target.port)) == b"OK"
    assert (
        cluster.ask(owner, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", gone) == b"OK"
    )
    assert str(cluster.ask(owner, "MGET", here, gone)).startswith("TRYAGAIN")  # (what a client would get)

    def finish() -> None:
        time.sleep(0.5)
        assert (
            cluster.ask(owner, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", here)
            == b"OK"
        )
        for node in cluster.masters():
            assert cluster.ask(node, "CLUSTER", "SETSLOT", str(slot), "NODE", _node_id(target.port)) == b"OK"

    finisher = threading.Thread(target=finish)
    started = time.monotonic()
    finisher.start()
    try:
        assert client.mget(here, gone) == [b"1", b"2"]
        assert time.monotonic() - started >= 0.5  # (it waited for the migration)
        assert client.mset({here: "3", gone: "4"}) and client.mget(here, gone) == [b"3", b"4"]
    finally:
        finisher.join()
    assert direct.mget(here, gone) == [b"3", b"4"]
