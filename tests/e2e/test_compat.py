"""Real clients through the proxy against a real Redis: it must not be able to tell the difference."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from proxy.embedded import EmbeddedRedis
from proxy.resp import encode_command
from tests.helpers import exchange, no_retry, read_frames, read_until, split_frames, wait_for

PROTOCOLS = [2, 3]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_strings_keyspace_and_expiry(proxy: Any, direct: redis.Redis, protocol: int) -> None:
    r = proxy.client(protocol=protocol)
    assert r.set("s", "v") is True
    assert r.get("s") == b"v"
    assert r.append("s", "w") == 2
    assert r.incrby("n", 5) == 5
    assert r.mset({"a": 1, "b": 2}) and r.mget("a", "b", "zz") == [b"1", b"2", None]
    assert r.exists("a", "b", "zz") == 2
    assert sorted(r.keys("*")) == [b"a", b"b", b"n", b"s"]
    assert r.set("ttl", "x", px=150) and 0 < r.pttl("ttl") <= 150
    assert r.expire("s", 100) and r.ttl("s") == 100
    assert r.persist("s") and r.ttl("s") == -1
    time.sleep(0.2)
    assert r.get("ttl") is None and direct.get("ttl") is None
    assert r.type("a") == b"string" and r.rename("a", "a2") and r.get("a2") == b"1"
    assert r.delete("a2", "b") == 2
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incr("s")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hashes_and_lists(proxy: Any, protocol: int) -> None:
    r = proxy.client(protocol=protocol)
    assert r.hset("h", mapping={"f1": "a", "f2": "b"}) == 2
    assert r.hgetall("h") == {b"f1": b"a", b"f2": b"b"}
    assert r.hincrby("h", "n", 3) == 3 and r.hlen("h") == 3
    assert r.rpush("l", *range(10)) == 10
    assert r.lrange("l", 0, 2) == [b"0", b"1", b"2"]
    assert r.lpop("l") == b"0" and r.llen("l") == 9
    assert r.zadd("z", {"a": 1.5, "b": 2}) == 2
    assert [tuple(x) for x in r.zrange("z", 0, -1, withscores=True)] == [(b"a", 1.5), (b"b", 2.0)]
    assert r.sadd("set", "x", "y") == 2 and r.smembers("set") == {b"x", b"y"}


def test_binary_safe_keys_and_values(proxy: Any, direct: redis.Redis) -> None:
    r = proxy.client()
    key, value = b"k\x00\r\n\xff", bytes(range(256)) * 4
    r.set(key, value)
    assert r.get(key) == value and direct.get(key) == value


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_multi_exec_watch(proxy: Any, direct: redis.Redis, protocol: int) -> None:
    r = proxy.client(protocol=protocol)
    with r.pipeline(transaction=True) as pipe:
        pipe.set("a", 1).incr("a").get("a")
        assert pipe.execute() == [True, 2, b"2"]
    # A WATCHed key changed by another client aborts the transaction.
    with r.pipeline(transaction=True) as pipe:
        pipe.watch("a")
        direct.set("a", 100)
        pipe.multi()
        pipe.set("a", 5)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert direct.get("a") == b"100"
    with r.pipeline(transaction=True) as pipe:
        pipe.watch("a")
        pipe.multi()
        pipe.set("a", 6)
        assert pipe.execute() == [True]
    assert direct.get("a") == b"6"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pubsub(proxy: Any, direct: redis.Redis, protocol: int) -> None:
    r = proxy.client(protocol=protocol)
    p = r.pubsub()
    p.subscribe("news")
    p.psubscribe("ev.*")
    confirmations = [p.get_message(timeout=2) for _ in range(2)]
    assert [m["type"] for m in confirmations] == ["subscribe", "psubscribe"]
    assert direct.publish("news", "hello") == 1
    assert direct.publish("ev.x", "world") == 1
    got = [p.get_message(timeout=2) for _ in range(2)]
    assert [(m["type"], m["data"]) for m in got] == [("message", b"hello"), ("pmessage", b"world")]
    p.unsubscribe("news")
    p.punsubscribe("ev.*")
    p.close()


def test_ssubscribe(proxy: Any, direct: redis.Redis) -> None:
    r = proxy.client(protocol=3)
    p = r.pubsub()
    p.ssubscribe("shard")
    assert p.get_sharded_message(timeout=2)["type"] == "ssubscribe"
    assert direct.spublish("shard", "s1") == 1
    assert p.get_sharded_message(timeout=2)["data"] == b"s1"
    p.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_resp3_client_keeps_working_while_subscribed(proxy: Any, direct: redis.Redis, protocol: int) -> None:
    """Raw RESP3: pushes interleave with ordinary replies on one connection."""
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(5)
        s.sendall(encode_command([b"HELLO", b"3"]) + encode_command([b"SUBSCRIBE", b"c"]))
        frames = read_frames(s, 2)
        assert frames[0].startswith(b"%") and frames[1].startswith(b">3\r\n$9\r\nsubscribe")
        direct.publish("c", "m1")
        s.sendall(encode_command([b"PING", b"x"]) + encode_command([b"PREDIS", b"STATS"]))
        frames = read_frames(s, 3)
        assert frames[0].startswith(b">3\r\n$7\r\nmessage")
        assert frames[1] == b"$1\r\nx\r\n" and b"# Predis" in frames[2]


def test_blocking_command_does_not_stall_other_clients(proxy: Any, direct: redis.Redis) -> None:
    """While one client's BLPOP blocks in Redis, another's 400 commands through the proxy all
    complete (the BLPOP, with no timeout, is still blocked after them), then BLPOP gets the job."""
    blocked = proxy.client()
    result: dict[str, Any] = {}

    def waiter() -> None:
        result["blpop"] = blocked.blpop(["q"], timeout=0)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20  # (a hang guard: until Redis shows the BLPOP blocked)
    while b"cmd=blpop" not in direct.execute_command("CLIENT", "LIST", "TYPE", "normal"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    other = proxy.client()
    for i in range(200):
        other.set(f"k{i}", i)
        assert other.get(f"k{i}") == str(i).encode()
    assert thread.is_alive() and b"cmd=blpop" in direct.execute_command("CLIENT", "LIST", "TYPE", "normal")
    other.rpush("q", "job")
    thread.join(20)
    assert result["blpop"] == (b"q", b"job")


def test_blocking_commands_exempt_from_command_timeout(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    proxy = make_proxy(redis_server.url, command_timeout=0.3)
    r = proxy.client()
    t0 = time.monotonic()
    assert r.blpop(["nothing"], timeout=1) is None
    assert r.xread({"stream": "$"}, block=800) in ([], {})
    assert time.monotonic() - t0 >= 1.7
    assert r.wait(0, 500) == 0
    assert proxy.stats.timeouts == 0


def test_auth_with_acl_user(proxy: Any, direct: redis.Redis) -> None:
    direct.acl_setuser("app", enabled=True, passwords=["+secret"], keys=["app:*"], commands=["+@all"])
    direct.acl_setuser("default", enabled=True, nopass=False, passwords=["+adminpw"])
    try:
        anon = proxy.client(**no_retry())
        with pytest.raises(redis.AuthenticationError):
            anon.get("app:x")
        app = proxy.client(username="app", password="secret")
        assert app.set("app:x", 1) and app.get("app:x") == b"1"
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.get("other")
        assert app.acl_whoami() == "app"
        with pytest.raises(redis.AuthenticationError):
            proxy.client(username="app", password="wrong", **no_retry()).ping()
        r3 = proxy.client(username="app", password="secret", protocol=3)
        assert r3.get("app:x") == b"1"
    finally:
        direct.acl_setuser("default", enabled=True, nopass=True, reset_passwords=True)


def test_select(proxy: Any, direct: redis.Redis, redis_server: Any) -> None:
    r = proxy.client(db=3)
    r.set("in3", "yes")
    assert direct.get("in3") is None
    assert redis.Redis(port=redis_server.port, db=3).get("in3") == b"yes"


def test_pipeline_of_1000_commands(proxy: Any) -> None:
    r = proxy.client()
    with r.pipeline(transaction=False) as pipe:
        for i in range(1000):
            pipe.set(f"p{i}", i)
            pipe.get(f"p{i}")
        out = pipe.execute()
    assert out[0::2] == [True] * 1000 and out[1::2] == [str(i).encode() for i in range(1000)]


def test_local_replies_keep_pipeline_order(proxy: Any) -> None:
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(5)
        req = b""
        for i in range(300):
            req += encode_command([b"SET", b"o%d" % i, b"%d" % i])
            if i % 7 == 0:
                req += encode_command([b"PREDIS", b"STATS", b"JSON"])
            req += encode_command([b"GET", b"o%d" % i])
        s.sendall(req)
        frames = read_frames(s, 300 * 2 + 43)
    expected_kinds = []
    for i in range(300):
        expected_kinds.append(b"+OK\r\n")
        if i % 7 == 0:
            expected_kinds.append("json")
        expected_kinds.append(b"$%d\r\n%d\r\n" % (len(str(i)), i))
    for frame, want in zip(frames, expected_kinds, strict=True):
        if want == "json":
            assert json.loads(frame.split(b"\r\n", 1)[1][:-2])["commands_forwarded"] >= 0
        else:
            assert frame == want


@pytest.mark.slow
def test_64mb_value(proxy: Any, direct: redis.Redis) -> None:
    r = proxy.client()
    value = bytes(range(256)) * (64 * 1024 * 1024 // 256)
    assert r.set("big", value)
    assert direct.strlen("big") == len(value)
    assert r.get("big") == value


async def test_asyncio_client(proxy: Any) -> None:
    for protocol in PROTOCOLS:
        r = aioredis.Redis(host=proxy.host, port=proxy.port, protocol=protocol)
        await r.set("a", "1")
        results = await asyncio.gather(*(r.incr("a") for _ in range(50)))
        assert sorted(results) == list(range(2, 52))
        async with r.pipeline(transaction=True) as pipe:
            assert await pipe.get("a").set("b", 2).execute() == [b"51", True]
        await r.aclose()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_info_has_predis_section(proxy: Any, protocol: int) -> None:
    r = proxy.client(protocol=protocol)
    info = r.info()
    assert "redis_version" in info and "commands_forwarded" in info
    assert "forward_latency_p99_us" in r.info("predis")
    assert "commands_forwarded" not in r.info("server")
    stats = json.loads(r.execute_command("PREDIS", "STATS", "JSON"))
    assert stats["upstream_status"] in ("up", "unknown") and stats["connected_clients"] >= 1
    with pytest.raises(redis.ResponseError, match="PREDIS HELP"):
        r.execute_command("PREDIS", "NOPE")


def test_client_reply_off_and_skip(proxy: Any, direct: redis.Redis) -> None:
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(5)
        s.sendall(
            encode_command([b"CLIENT", b"REPLY", b"OFF"])
            + encode_command([b"SET", b"x", b"1"])
            + encode_command([b"PREDIS", b"STATS"])
            + encode_command([b"CLIENT", b"REPLY", b"SKIP"])  # ignored while OFF, as in Redis
            + encode_command([b"CLIENT", b"REPLY", b"ON"])
            + encode_command([b"CLIENT", b"REPLY", b"SKIP"])
            + encode_command([b"GET", b"x"])
            + encode_command([b"ECHO", b"seen"])
        )
        assert read_frames(s, 2) == [b"+OK\r\n", b"$4\r\nseen\r\n"]
    assert direct.get("x") == b"1"


def test_reset_and_quit(proxy: Any) -> None:
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(5)
        s.sendall(
            encode_command([b"SELECT", b"2"])
            + encode_command([b"SUBSCRIBE", b"c"])
            + encode_command([b"RESET"])
            + encode_command([b"CLIENT", b"INFO"])
            + encode_command([b"QUIT"])
        )
        frames = read_frames(s, 5)
        assert frames[0] == b"+OK\r\n" and frames[2] == b"+RESET\r\n"
        assert b" db=0 " in frames[3] and frames[4] == b"+OK\r\n"
        assert s.recv(10) == b""


def test_redis_cli(proxy: Any) -> None:
    cli = shutil.which("redis-cli")
    assert cli, "redis-cli is part of the test set-up"

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, "-p", str(proxy.port), *a], capture_output=True, timeout=10, text=True)

    assert run("SET", "cli", "hello world").stdout.strip() == "OK"
    assert run("GET", "cli").stdout.strip() == "hello world"
    assert "# Predis" in run("INFO").stdout
    piped = subprocess.run(
        [cli, "-p", str(proxy.port)],
        input="INCR c\nINCR c\nGET c\n",
        capture_output=True,
        timeout=10,
        text=True,
    )
    assert piped.stdout.split() == ["1", "2", "2"]
    assert run("-r", "3", "INCR", "rep").stdout.split() == ["1", "2", "3"]


ATTRIB = [b"DEBUG", b"PROTOCOL", b"attrib"]  # an attribute frame, then the command's reply
PUSHED = [b"DEBUG", b"PROTOCOL", b"push"]  # a push frame (no request's reply), then the reply

# Rounds of pipelined commands on one RESP3 connection. Plain rounds run in the reply side's fast
# mode (hiredis counts frames); CLIENT SETNAME's reply is captured and PREDIS STATS answered by the
# proxy, both of which need every reply before them counted right; "big" is read in many pieces,
# and its payload is full of '|' bytes (the attribute type byte).
RESP3_ROUNDS = [
    [ATTRIB, [b"PING"], PUSHED, [b"GET", b"k"], [b"ECHO", b"x"]],
    [[b"GET", b"k"]] * 8,
    [PUSHED, *[[b"GET", b"k"]] * 4, ATTRIB, ATTRIB, [b"GET", b"k"]],
    [[b"GET", b"big"], ATTRIB, [b"GET", b"big"], [b"PING"], PUSHED],
    [[b"CLIENT", b"SETNAME", b"n"], ATTRIB, [b"GET", b"k"], PUSHED, [b"CLIENT", b"GETNAME"]],
    [[b"SET", b"k", b"v2"], ATTRIB, [b"GET", b"k"], [b"GET", b"k"], PUSHED],
    [ATTRIB, [b"PREDIS", b"STATS"], [b"GET", b"k"]],
    [[b"GET", b"k"]] * 3,
]


@pytest.mark.parametrize("tier", ["off", "cpu"])
def test_resp3_pushes_and_attributes_are_not_counted_as_replies(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, tier: str
) -> None:
    """Issue 18: a push before a reply answers no request, an attribute belongs to the reply
    after it. Every round's bytes through the proxy are Redis's own, on the fast path and the
    scanner's, with the tier serving hits and without it (PREDIS STATS, the proxy's own reply,
    is compared by its position only)."""
    proxy = make_proxy(redis_server.url, hot_tier=tier)
    direct.set("k", "v")
    direct.set("big", b"|" * 300_000)
    streams: dict[int, list[bytes]] = {}
    for port in (redis_server.port, proxy.port):
        direct.set("k", "v")
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            s.sendall(encode_command([b"HELLO", b"3"]))
            read_frames(s, 1)
            rounds = []
            for i, cmds in enumerate(RESP3_ROUNDS):
                end = encode_command([b"ECHO", b"end-%d" % i])
                s.sendall(b"".join(encode_command(c) for c in cmds) + end)
                rounds.append(read_until(s, b"$5\r\nend-%d\r\n" % i))
                if port == proxy.port and i == 1 and tier == "off":
                    (conn,) = proxy.server.clients
                    assert conn.replies.fast  # the plain round left the reply side in fast mode
            streams[port] = rounds
    want, got = streams[redis_server.port], streams[proxy.port]
    # Round 6's second reply: the proxy's statistics, against Redis's unknown-command error.
    want[6], got[6] = (split_frames(r) for r in (want[6], got[6]))
    assert want[6].pop(1).startswith(b"-ERR unknown command 'PREDIS'")
    assert b"# Predis" in got[6].pop(1)
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g == w, (i, g[:300], w[:300])
    assert proxy.stats.protocol_errors == 0 and proxy.stats.upstream_errors == 0


@pytest.mark.parametrize("tier", ["off", "cpu"])
def test_reply_order_holds_after_an_attribute_before_a_blocked_reply(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, tier: str
) -> None:
    """An attribute counted as a reply used to retire the blocked BLPOP's slot too, so the next
    reply the proxy makes itself (a tier hit, PREDIS STATS) overtook BLPOP's (issue 18)."""
    proxy = make_proxy(redis_server.url, hot_tier=tier)
    direct.set("k", "v")
    local = [b"GET", b"k"] if tier == "cpu" else [b"PREDIS", b"STATS"]
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(10)
        s.sendall(encode_command([b"HELLO", b"3"]))
        read_frames(s, 1)
        deadline = time.monotonic() + 10
        while tier == "cpu" and proxy.server.tier.hits == 0:  # until the tier serves k
            assert time.monotonic() < deadline
            s.sendall(encode_command([b"GET", b"k"]))
            assert read_frames(s, 1) == [b"$1\r\nv\r\n"]
        s.sendall(encode_command(ATTRIB) + encode_command([b"BLPOP", b"q", b"10"]))
        assert read_frames(s, 1)[0].startswith(b"|1\r\n")
        s.sendall(encode_command(local))
        while not direct.execute_command("CLIENT", "LIST", "TYPE", "normal").count(b"cmd=blpop"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        direct.rpush("q", "item")
        frames = read_frames(s, 2)
    assert frames[0] == b"*2\r\n$1\r\nq\r\n$4\r\nitem\r\n"
    assert frames[1] == b"$1\r\nv\r\n" if tier == "cpu" else b"# Predis" in frames[1]


def _fill_for_backup(direct: redis.Redis) -> None:
    direct.set(b"bin\x00key", bytes(range(256)) * 40)
    direct.hset("h", mapping={"f1": "a", "f2": "b"})
    direct.rpush("l", *range(50))
    direct.set("ttl", "v", ex=3600)
    db3 = redis.Redis(port=direct.connection_pool.connection_kwargs["port"], db=3)
    db3.set("in-db3", "x")
    db3.close()


def _contents(port: int) -> dict[tuple[int, bytes], bytes]:
    """Every key of dbs 0 and 3 with its DUMP serialisation (type, value and encoding)."""
    out = {}
    for db in (0, 3):
        r = redis.Redis(port=port, db=db)
        out.update({(db, key): r.dump(key) for key in r.scan_iter()})
        r.close()
    return out


@pytest.fixture
def quick_sync(direct: redis.Redis) -> Iterator[None]:
    """Redis waits 5 s for more replicas before a diskless transfer; tests need not."""
    before = direct.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"]
    direct.config_set("repl-diskless-sync-delay", 0)
    yield
    direct.config_set("repl-diskless-sync-delay", before)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
@pytest.mark.parametrize("tier", ["off", "cpu"])
def test_rdb_backup_through_the_proxy_restores_the_same_data(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, quick_sync: None, tmp_path: Any, tier: str
) -> None:
    """Issue 18: ``redis-cli --rdb`` (SYNC) through the proxy writes a dump that restores the
    same keys as one taken from Redis directly (the files differ only in their creation time)."""
    proxy = make_proxy(redis_server.url, hot_tier=tier)
    _fill_for_backup(direct)
    source = _contents(redis_server.port)
    for name, port in (("direct", redis_server.port), ("proxy", proxy.port)):
        dump = tmp_path / name / "dump.rdb"
        dump.parent.mkdir()
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "--rdb", str(dump)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and "Transfer finished with success" in done.stderr, done
        with EmbeddedRedis(workdir=dump.parent) as restored:
            assert _contents(restored.port) == source, name
    assert proxy.stats.upstream_errors == 0


@pytest.mark.parametrize(
    "handshake",
    [
        b"SYNC\r\n",
        encode_command([b"PING"]) + encode_command([b"SYNC"]),
        encode_command([b"PSYNC", b"?", b"-1"]),
    ],
    ids=["inline", "after-ping", "psync"],
)
@pytest.mark.parametrize("tier", ["off", "cpu"])
def test_sync_stream_passes_raw_rdb_then_the_feed(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, quick_sync: None, handshake: bytes, tier: str
) -> None:
    """A raw SYNC/PSYNC reads the RDB payload (no CRLF after it), then sees another client's
    write arrive on the replication feed, as directly against Redis."""
    proxy = make_proxy(redis_server.url, hot_tier=tier)
    direct.set("before", "1")
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(20)
        s.sendall(handshake)
        buf = b""
        while b"REDIS" not in buf or not re.search(rb"\$(\d+)\r\n", buf):
            chunk = s.recv(1 << 16)
            assert chunk, buf
            buf += chunk
        if handshake.startswith(b"*1\r\n$4\r\nPING"):
            assert buf.startswith(b"+PONG\r\n")
            buf = buf[7:]
        if b"PSYNC" in handshake:
            assert buf.startswith(b"+FULLRESYNC ")
            buf = buf[buf.index(b"\r\n") + 2 :]
        header = re.match(rb"\n*\$(\d+)\r\n", buf)  # (Redis sends newlines while it prepares the RDB)
        assert header, buf[:100]
        size, body = int(header.group(1)), buf[header.end() :]
        while len(body) < size:
            chunk = s.recv(1 << 16)
            assert chunk
            body += chunk
        assert body.startswith(b"REDIS")
        feed = body[size:]
        writer = proxy.client()
        writer.set("after-sync", "seen")
        while b"after-sync" not in feed:
            chunk = s.recv(1 << 16)
            assert chunk, feed
            feed += chunk
        assert encode_command([b"SET", b"after-sync", b"seen"]) in feed
        writer.close()
    assert proxy.stats.upstream_errors == 0 and proxy.stats.protocol_errors == 0


# Raw bytes in, raw bytes out: these must be identical directly and through the proxy.
DIFFERENTIAL = [
    [b"SET", b"a", b"1"],
    [b"GET", b"a"],
    [b"GET", b"missing"],
    [b"INCR", b"a"],
    [b"INCR", b"a", b"b"],
    [b"NOSUCHCOMMAND", b"x"],
    [b"LPUSH", b"a", b"x"],
    [b"HSET", b"h", b"f", b"v"],
    [b"HGETALL", b"h"],
    [b"MGET", b"a", b"h", b"n"],
    [b"ECHO", b"\x00\r\n"],
    [b"TYPE", b"h"],
    [b"OBJECT", b"ENCODING", b"a"],
    [b"HELLO", b"3"],
    [b"HGETALL", b"h"],
    [b"ZADD", b"z", b"1.5", b"m"],
    [b"ZSCORE", b"z", b"m"],
    [b"SMEMBERS", b"nope"],
    [b"EXISTS", b"a"],
    [b"DEL", b"a"],
    [b"HELLO", b"2"],
    [b"HGETALL", b"h"],
    [b"MULTI"],
    [b"SET", b"t", b"1"],
    [b"BADCMD"],
    [b"EXEC"],
    [b"MULTI"],
    [b"INCR", b"t"],
    [b"EXEC"],
    [b"SELECT", b"99"],
    [b"PING"],
]


def roundtrip(port: int, payload: bytes, frames: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(5)
        s.sendall(payload)
        return read_frames(s, frames)


def test_differential_replies_are_byte_identical(proxy: Any, direct: redis.Redis, redis_server: Any) -> None:
    payload = b"".join(encode_command(c) for c in DIFFERENTIAL) + b'PING inline\r\nECHO "a b"\r\n'
    count = len(DIFFERENTIAL) + 2
    want = roundtrip(redis_server.port, payload, count)
    direct.flushall()
    got = roundtrip(proxy.port, payload, count)
    # HELLO reports the connection id, which differs between any two connections.
    client_id = re.compile(rb"\$2\r\nid\r\n:\d+")
    assert [client_id.sub(b"ID", f) for f in got] == [client_id.sub(b"ID", f) for f in want]


def test_empty_multibulks_ignored_and_split_reads(proxy: Any, direct: redis.Redis) -> None:
    """Commands split at every byte, with *0 / *-1 between them, arrive whole and in order."""
    payload = (
        b"*0\r\n"
        + encode_command([b"SET", b"split", b"v" * 100])
        + b"*-1\r\n"
        + encode_command([b"GET", b"split"])
    )
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(5)
        for i in range(len(payload)):
            s.sendall(payload[i : i + 1])
            time.sleep(0.0005)
        assert read_frames(s, 2) == [b"+OK\r\n", b"$100\r\n" + b"v" * 100 + b"\r\n"]


@pytest.mark.parametrize("tier", ["cpu", "off"])
def test_proxy_answers_inside_multi_keep_order(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, tier: str
) -> None:
    """A local reply inside MULTI must not need a sync ECHO (it would be queued by the transaction)."""
    proxy = make_proxy(redis_server.url, hot_tier=tier)
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(5)
        s.sendall(encode_command([b"SET", b"x", b"1"]) * 3)
        read_frames(s, 3)
        s.sendall(
            encode_command([b"SET", b"x", b"2"])
            + encode_command([b"MULTI"])
            + encode_command([b"SET", b"a", b"1"])
            + encode_command([b"PREDIS", b"STATS"])
            + encode_command([b"GET", b"x"])
            + encode_command([b"EXEC"])
        )
        frames = read_frames(s, 6)
    assert frames[:3] == [b"+OK\r\n", b"+OK\r\n", b"+QUEUED\r\n"]
    assert frames[3].startswith(b"-ERR PREDIS is not allowed inside MULTI")
    assert frames[4:] == [b"+QUEUED\r\n", b"*2\r\n+OK\r\n$1\r\n2\r\n"]


def test_an_auth_inside_a_transaction_counts_only_if_exec_ran_it(proxy: Any, direct: redis.Redis) -> None:
    """An AUTH queued in MULTI answers +QUEUED; if it then fails in EXEC the connection keeps its
    user, and the tier must not serve it as the user it named (the proxy used to take the
    +QUEUED for a login: an entry read by a user with more keys then reached this one)."""
    direct.acl_setuser("app", enabled=True, passwords=["+secret"], keys=["app:*"], commands=["+@all"])
    direct.acl_setuser("boss", enabled=True, passwords=["+bosspw"], keys=["*"], commands=["+@all"])
    direct.set("secret:1", "s")
    try:
        boss = proxy.client(username="boss", password="bosspw")
        assert boss.get("secret:1") == b"s" and boss.get("secret:1") == b"s"  # (in the tier, as boss's)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            run = partial(exchange, s)
            assert run([b"AUTH", b"app", b"secret"]) == [b"+OK\r\n"]
            _, queued, exec_reply = run([b"MULTI"], [b"AUTH", b"boss", b"wrong"], [b"EXEC"])
            assert queued == b"+QUEUED\r\n" and exec_reply.startswith(b"*1\r\n-WRONGPASS")
            (got,) = run([b"GET", b"secret:1"])
            assert got.startswith(b"-NOPERM"), got  # (still app, as Redis says)
            _, _, exec_reply = run([b"MULTI"], [b"AUTH", b"boss", b"bosspw"], [b"EXEC"])
            assert exec_reply == b"*1\r\n+OK\r\n"
            assert run([b"GET", b"secret:1"]) == [b"$1\r\ns\r\n"]  # (boss now)
    finally:
        direct.acl_deluser("app", "boss")


def test_a_name_or_protocol_set_inside_a_transaction_counts_only_if_exec_ran_it(
    proxy: Any, direct: redis.Redis
) -> None:
    """CLIENT SETNAME and HELLO queued in MULTI answer +QUEUED and take effect at EXEC, if it runs.
    The proxy used to take the +QUEUED of a SETNAME for the new name, so after a reconnect it
    named the connection with a name Redis never gave it, and it missed a HELLO 3 that ran, so a
    multiplexed client went back to the RESP2 shared connection and got RESP2 replies."""
    direct.hset("h", "a", "1")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        run = partial(exchange, s)
        assert run([b"CLIENT", b"SETNAME", b"before"]) == [b"+OK\r\n"]
        assert run([b"WATCH", b"w"]) == [b"+OK\r\n"]
        direct.set("w", "changed")
        _, queued, exec_reply = run([b"MULTI"], [b"CLIENT", b"SETNAME", b"never"], [b"EXEC"])
        assert queued == b"+QUEUED\r\n" and exec_reply == b"*-1\r\n"  # (aborted by the WATCH)
        assert run([b"CLIENT", b"GETNAME"]) == [b"$6\r\nbefore\r\n"]
        # A new upstream connection gets the name Redis says this one has, not the queued one.
        (upstream,) = [c for c in direct.client_list() if c.get("name") == "before"]
        direct.client_kill_filter(_id=upstream["id"])
        # (an error while the proxy learns that its connection is gone)
        wait_for(lambda: not run([b"CLIENT", b"GETNAME"])[0].startswith(b"-"), timeout=10)
        assert run([b"CLIENT", b"GETNAME"]) == [b"$6\r\nbefore\r\n"]
        _, _, exec_reply = run([b"MULTI"], [b"CLIENT", b"SETNAME", b"after"], [b"EXEC"])
        assert exec_reply == b"*1\r\n+OK\r\n"
        assert run([b"CLIENT", b"GETNAME"]) == [b"$5\r\nafter\r\n"]

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        run = partial(exchange, s)
        assert run([b"WATCH", b"w"]) == [b"+OK\r\n"]
        direct.set("w", "again")
        assert run([b"MULTI"], [b"HELLO", b"3"], [b"EXEC"])[2] == b"*-1\r\n"
        assert run([b"HGETALL", b"h"]) == [b"*2\r\n$1\r\na\r\n$1\r\n1\r\n"]  # (still RESP2)
        exec_reply = run([b"MULTI"], [b"HELLO", b"3"], [b"EXEC"])[2]
        assert exec_reply.startswith(b"*1\r\n%")
        assert run([b"HGETALL", b"h"]) == [b"%1\r\n$1\r\na\r\n$1\r\n1\r\n"]  # (RESP3 now, as Redis)
        assert run([b"SET", b"x", b"1"], [b"GET", b"x"]) == [b"+OK\r\n", b"$1\r\n1\r\n"]
