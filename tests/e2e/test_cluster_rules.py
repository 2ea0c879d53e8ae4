"""Redis Cluster's routing rules (proxy.cluster) against real cluster-mode redis-servers: two
masters sharing the 16384 slots. The slot of every key is Redis's, the slot map read from CLUSTER
SLOTS sends each key to the master that serves it, a MOVED error is read right, and a multi-key
command split by slot, each part run on its master and the replies merged, answers as one node
holding every key would."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.cluster import CROSSSLOT, SlotMap, key_slot, merge, parse_redirect, split
from proxy.embedded import EmbeddedRedis, cluster_port
from proxy.resp import encode_command
from tests.helpers import read_frames, wait_for


def raw(client: redis.Redis, *args: bytes) -> bytes:
    """One command's reply frame as Redis sent it."""
    with socket.create_connection(("127.0.0.1", client.connection_pool.connection_kwargs["port"])) as s:
        s.settimeout(10)
        s.sendall(encode_command(list(args)))
        return read_frames(s, 1)[0]


@pytest.fixture(scope="module")
def two_masters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[redis.Redis]]:
    servers = []
    for i in range(2):
        work = tmp_path_factory.mktemp(f"cluster-{i}")
        servers.append(
            EmbeddedRedis(
                port=cluster_port(),
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(Path(work) / "nodes.conf"),
                ],
                workdir=work,
            ).start()
        )
    try:
        a, b = (redis.Redis(port=s.port, socket_timeout=10) for s in servers)
        a.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 8191)
        b.execute_command("CLUSTER", "ADDSLOTSRANGE", 8192, 16383)
        a.execute_command("CLUSTER", "MEET", "127.0.0.1", servers[1].port)
        wait_for(
            lambda: all(c.execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") >= 0 for c in (a, b)),
            30,
        )
        yield [a, b]
    finally:
        for s in servers:
            s.close()


def test_every_key_s_slot_is_redis_s(two_masters: list[redis.Redis]) -> None:
    rng = random.Random(1)
    alphabet = b"ab{}x:0"
    keys = [b"somekey", b"foo{hash_tag}", b"{user1}.following", b"{}x", b"{{a}}", b"a{}b{c}", b""]
    keys += [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(300)]
    keys += [rng.randbytes(rng.randint(1, 20)) for _ in range(100)]
    a = two_masters[0]
    for key in keys:
        assert key_slot(key) == a.execute_command("CLUSTER", "KEYSLOT", key), key


def test_the_slot_map_sends_each_key_to_its_master_and_moved_is_read(two_masters: list[redis.Redis]) -> None:
    a, b = two_masters
    slots = SlotMap.from_slots_reply(a.execute_command("CLUSTER", "SLOTS"))
    assert slots.covered() == 16384 and len(slots.masters()) == 2
    ports = {a.connection_pool.connection_kwargs["port"]: a, b.connection_pool.connection_kwargs["port"]: b}
    for i in range(200):
        key = f"k{i}".encode()
        node = slots.master_for(key_slot(key))
        assert node is not None
        assert ports[node.port].set(key, i)  # (the node that serves it takes it)
        other = b if ports[node.port] is a else a
        refused = raw(other, b"GET", key)  # (redis-py would turn MOVED into its own exception)
        assert parse_redirect(refused) == ("MOVED", key_slot(key), node), refused


def test_a_multi_key_command_split_by_slot_answers_as_one_node_would(two_masters: list[redis.Redis]) -> None:
    a, b = two_masters
    slots = SlotMap.from_slots_reply(a.execute_command("CLUSTER", "SLOTS"))
    by_port = {c.connection_pool.connection_kwargs["port"]: c for c in two_masters}
    keys = [f"m{i}".encode() for i in range(40)]
    assert len({key_slot(k) for k in keys}) > 1

    def run(args: list[bytes]) -> object:
        parts = split(args)
        assert parts is not None
        replies: list[object] = []
        for part in parts:
            node = slots.master_for(part.slot)
            assert node is not None
            try:
                replies.append(by_port[node.port].execute_command(*part.args))
            except redis.ResponseError as exc:
                replies.append(exc)
        return merge(args[0], parts, replies)

    values = [f"v{i}".encode() for i in range(40)]
    assert run([b"MSET", *[x for kv in zip(keys, values, strict=True) for x in kv]]) == b"OK"
    wanted = [b"nope", *keys[::3], b"nope2"]
    assert run([b"MGET", *wanted]) == [None, *values[::3], None]
    assert run([b"EXISTS", *keys[:10], b"nope"]) == 10
    assert run([b"DEL", *keys[:5]]) == 5
    assert run([b"MGET", *keys[:6]]) == [None] * 5 + [values[5]]
    # Across slots, Redis itself refuses: the error the proxy gives for commands it cannot split.
    assert raw(a, b"MGET", b"{x}1", b"{y}2") == CROSSSLOT
    assert split([b"GET", b"x"]) is None and split([b"MSET", b"k"]) is None


def test_the_keys_a_cluster_routes_by_are_redis_s_own(two_masters: list[redis.Redis]) -> None:
    """``CommandTable.keys`` (every key a command names, from the key specifications of Redis's
    COMMAND reply) against Redis's COMMAND GETKEYS, over commands of every key-spec shape."""
    import hiredis

    from proxy.keyspace import CommandTable

    reader = hiredis.Reader()
    reader.feed(raw(two_masters[0], b"COMMAND"))
    table = CommandTable.from_reply(reader.gets())
    commands = [
        [b"GET", b"a"],
        [b"MGET", b"a", b"b", b"c"],
        [b"MSET", b"a", b"1", b"b", b"2"],
        [b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"],
        [b"BLPOP", b"l1", b"l2", b"0"],
        [b"XREAD", b"COUNT", b"2", b"STREAMS", b"s1", b"s2", b"0", b"0"],
        [b"ZUNIONSTORE", b"dst", b"2", b"z1", b"z2", b"WEIGHTS", b"1", b"2"],
        [b"OBJECT", b"ENCODING", b"k"],
        [b"LMOVE", b"src", b"dst", b"LEFT", b"RIGHT"],
        [b"GEORADIUS", b"g", b"0", b"0", b"1", b"km", b"STORE", b"dst"],
        [b"MIGRATE", b"h", b"1", b"", b"0", b"1", b"KEYS", b"k1", b"k2"],
        [b"BITOP", b"AND", b"dst", b"a", b"b"],
        [b"SET", b"k", b"v", b"EX", b"10"],
    ]
    for command in commands:
        reader.feed(raw(two_masters[0], b"COMMAND", b"GETKEYS", *command))
        theirs = reader.gets()
        assert table.keys(command[0].upper(), command) == theirs, command
    assert table.keys(b"PING", [b"PING"]) == [] and table.keys(b"NOSUCH", [b"NOSUCH", b"x"]) is None
