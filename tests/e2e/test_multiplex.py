"""Many clients over a few shared upstream connections (``upstream_pool``, proxy.multiplex): the
requests of clients in the default state share the pool, replies go back to the right client in
order, and a client that changes its connection's state is pinned to a connection of its own
until it is back in the default state."""

from __future__ import annotations

import random
import socket
import threading
from typing import Any

import pytest
import redis

from proxy.resp import encode_command
from proxy.upstream import DOWN
from tests.helpers import read_frames, wait_for


def connections(direct: redis.Redis, name: str | None = None) -> list[dict[str, Any]]:
    """Redis's client list, less the asking connection (and only those called ``name``)."""
    me = direct.client_id()
    return [c for c in direct.client_list() if int(c["id"]) != me and (name is None or c.get("name") == name)]


def proxies_clients(direct: redis.Redis) -> list[dict[str, Any]]:
    """The proxy's connections that serve clients (not its own tracking and filling ones)."""
    return [c for c in connections(direct) if c.get("name") not in ("predis-tracking", "predis-filler")]


def answers(client: redis.Redis) -> Any:
    try:
        return client.get("a")
    except redis.RedisError:
        return None


def figures(proxy: Any) -> dict[str, Any]:
    return proxy.server.stats.snapshot()  # type: ignore[no-any-return]


def test_many_clients_share_the_pool_and_each_gets_its_own_replies(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    proxy = make_proxy(redis_server.url, upstream_pool=2, hot_tier="off")
    errors: list[str] = []
    socks = [socket.create_connection((proxy.host, proxy.port)) for _ in range(24)]

    def client(n: int, s: socket.socket) -> None:
        """Pipelines of 1 to 4 SETs and as many GETs of this client's own keys (no deeper than
        the pool takes): every reply is its own."""
        rng = random.Random(n)
        s.settimeout(20)
        for round_ in range(60):
            depth = rng.randint(1, 4)
            keys = [f"c{n}:{rng.randrange(5)}" for _ in range(depth)]
            values = [f"{n}-{round_}-{i}" for i in range(depth)]
            out = b"".join(
                encode_command([b"SET", k.encode(), v.encode()]) for k, v in zip(keys, values, strict=True)
            )
            out += b"".join(encode_command([b"GET", k.encode()]) for k in keys)
            s.sendall(out)
            got = read_frames(s, 2 * depth)
            last = {k: v for k, v in zip(keys, values, strict=True)}  # (a key's last SET wins)
            want = [b"+OK\r\n"] * depth + [b"$%d\r\n%s\r\n" % (len(last[k]), last[k].encode()) for k in keys]
            if got != want:
                errors.append(f"client {n} round {round_}: {got[:3]} != {want[:3]}")
                return

    threads = [threading.Thread(target=client, args=(n, s)) for n, s in enumerate(socks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors[:3]
        serving = proxies_clients(direct)
        assert len(serving) == 2, serving  # 24 clients, 2 upstream connections
        assert all(c["name"] == "predis-pool" for c in serving)
        assert figures(proxy)["upstream_pool_pinned_clients"] == 0
    finally:
        for s in socks:
            s.close()


def test_a_transaction_pins_the_client_until_it_ends(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    other = proxy.client(protocol=2)  # (RESP2, as the raw client: both on the one RESP2 connection)
    other.set("x", "0")
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(10)
        s.sendall(encode_command([b"GET", b"x"]))
        assert read_frames(s, 1) == [b"$1\r\n0\r\n"]
        assert len(proxies_clients(direct)) == 1  # (both clients on the pool's one connection)
        s.sendall(encode_command([b"MULTI"]) + encode_command([b"INCR", b"x"]))
        assert read_frames(s, 2) == [b"+OK\r\n", b"+QUEUED\r\n"]
        # Inside the transaction: a connection of its own, and the other client is not in it.
        assert figures(proxy)["upstream_pool_pinned_clients"] == 1
        assert len(proxies_clients(direct)) == 2
        assert other.incr("x") == 1  # (not queued in the pinned client's transaction)
        s.sendall(encode_command([b"EXEC"]))
        assert read_frames(s, 1) == [b"*1\r\n:2\r\n"]
        # Back in the default state with nothing owed: the next request goes over the pool again.
        s.sendall(encode_command([b"GET", b"x"]))
        assert read_frames(s, 1) == [b"$1\r\n2\r\n"]
        assert figures(proxy)["upstream_pool_pinned_clients"] == 0
        # The next transaction reuses the connection of its own kept from this one: no connect.
        connects = figures(proxy)["upstream_connects"]
        s.sendall(encode_command([b"MULTI"]) + encode_command([b"INCR", b"x"]) + encode_command([b"EXEC"]))
        assert read_frames(s, 3) == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n:3\r\n"]
        assert figures(proxy)["upstream_connects"] == connects
        assert len(proxies_clients(direct)) == 2


def test_select_and_auth_pin_the_client_and_leave_the_pool_alone(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    direct.acl_setuser("alice", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all"])
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    pooled = proxy.client()
    selecting = proxy.client(db=3)  # (redis-py sends SELECT 3 on connect)
    selecting.set("k", "in-3")
    pooled.set("k", "in-0")
    alice = proxy.client(username="alice", password="secret")
    assert alice.acl_whoami() == "alice"
    assert pooled.acl_whoami() == "default"  # (the pool's connection did not become alice's)
    assert selecting.get("k") == b"in-3" and pooled.get("k") == b"in-0"
    assert redis.Redis(port=redis_server.port, db=3).get("k") == b"in-3"
    assert direct.get("k") == b"in-0"
    assert figures(proxy)["upstream_pool_pinned_clients"] == 2


def test_a_deep_pipeline_pins_the_client_and_its_replies_come_back_in_order(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    pipe = proxy.client().pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"k{i}", i)
        pipe.get(f"k{i}")
    replies = pipe.execute()
    assert replies == [x for i in range(500) for x in (True, str(i).encode())]
    assert figures(proxy)["upstream_pool_pinned_clients"] == 1
    assert proxy.client().get("k7") == b"7"  # (others still on the pool)


def test_subscribers_are_pinned_and_publishers_stay_pooled(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    sub = proxy.client().pubsub()
    sub.subscribe("news")
    assert sub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    publisher = proxy.client()
    assert publisher.publish("news", "hello") == 1
    message = sub.get_message(timeout=5)
    assert message is not None and message["data"] == b"hello"
    assert figures(proxy)["upstream_pool_pinned_clients"] == 1
    sub.close()


def test_a_killed_pool_connection_fails_only_what_was_in_flight_and_the_pool_comes_back(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    client = proxy.client()
    client.set("a", "1")
    (pool_conn,) = connections(direct, "predis-pool")
    direct.client_kill_filter(_id=pool_conn["id"])
    wait_for(lambda: figures(proxy)["upstream_pool_connections"] == 0)
    assert client.get("a") == b"1"  # (a new pooled connection, opened by this request)
    assert len(connections(direct, "predis-pool")) == 1


def test_a_pooled_timeout_resets_that_connection_and_the_others_recover(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    """A request past its command timeout: the shared connection it waits on is reset (nothing
    in it lands later), everything owed on it fails, and the next requests open another."""
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off", command_timeout=0.5)
    client = proxy.client()
    assert client.set("a", "1")
    slow = proxy.client()
    with pytest.raises(redis.ResponseError, match="did not reply within"):
        slow.execute_command("DEBUG", "SLEEP", "1.5")
    wait_for(lambda: answers(client) == b"1", timeout=10)
    assert figures(proxy)["upstream_timeouts"] >= 1


def test_a_hostile_client_cannot_break_the_shared_connection_for_the_others(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    """Every fuzzing seed and regression input of the request path, each from a fresh client, while
    a pooled client's reads go on: none of them reaches the shared connection in a form that makes
    Redis drop it (the same pooled connection throughout), and the pooled client gets every reply."""
    from pathlib import Path

    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    direct.set("a", "1")
    good = socket.create_connection((proxy.host, proxy.port))
    good.settimeout(10)
    inputs = [
        p.read_bytes()
        for d in ("seeds", "regressions")
        for t in ("request_parser", "request_reader")
        for p in sorted((Path(__file__).parents[2] / "fuzz" / d / t).glob("*"))
        if p.is_file()
    ]
    assert len(inputs) >= 10
    good.sendall(encode_command([b"GET", b"a"]))
    assert read_frames(good, 1) == [b"$1\r\n1\r\n"]
    (pooled,) = connections(direct, "predis-pool")
    for data in inputs:
        hostile = socket.create_connection((proxy.host, proxy.port))
        hostile.settimeout(5)
        good.sendall(encode_command([b"GET", b"a"]))
        hostile.sendall(data + encode_command([b"PING"]))
        try:
            hostile.recv(1 << 16)  # (whatever it gets: an answer, an error, or the door)
        except OSError:
            pass
        hostile.close()
        assert read_frames(good, 1) == [b"$1\r\n1\r\n"]
    assert [c["id"] for c in connections(direct, "predis-pool")] == [pooled["id"]]  # (never dropped)
    assert figures(proxy)["upstream_errors"] == 0


def test_a_large_request_or_reply_pins_the_client(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    """Values past 64 KiB would hold the shared connection's other clients behind them."""
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    writer, reader = proxy.client(protocol=2), proxy.client(protocol=2)
    assert writer.set("small", "x") and figures(proxy)["upstream_pool_pinned_clients"] == 0
    assert writer.set("large", b"v" * (1 << 20))
    assert figures(proxy)["upstream_pool_pinned_clients"] == 1
    direct.set("large2", b"w" * (1 << 20))
    assert reader.get("large2") == b"w" * (1 << 20)  # (the reply came over the pool; the next ones will not)
    assert figures(proxy)["upstream_pool_pinned_clients"] == 2
    assert reader.get("small") == b"x" and writer.get("large") == b"v" * (1 << 20)


def test_a_full_shared_connection_pauses_every_client_that_sends_on_it(
    make_proxy: Any, tmp_path: Any
) -> None:
    """Redis stops reading (SIGSTOP): the shared connection's buffer fills past the backpressure
    mark and every client with a request on it stops being read, a client that sends only then
    included (their next requests wait in their own sockets, not in the proxy); once Redis reads
    again every request is answered, in order."""
    import os
    import signal

    from proxy.embedded import EmbeddedRedis

    with EmbeddedRedis(workdir=tmp_path) as server:
        proxy = make_proxy(
            server.url, upstream_pool=1, hot_tier="off", backpressure_bytes=256 * 1024, command_timeout=60
        )
        value = b"v" * 60_000  # (one SET each, under the 64 KiB that pins a client)
        socks = [
            socket.create_connection((proxy.host, proxy.port)) for _ in range(301)
        ]  # (past the kernel's buffers)
        for s in socks:
            s.settimeout(30)
            s.sendall(encode_command([b"SET", b"warm", b"1"]))
            assert read_frames(s, 1) == [b"+OK\r\n"]
        pool = proxy.server.shared.pool
        os.kill(server.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            for i, s in enumerate(socks[:-1]):
                s.sendall(encode_command([b"SET", f"k{i}".encode(), value]))
            wait_for(lambda: any(c is not None and c.full for c in pool.conns[False]), timeout=30)
            late = socks[-1]  # (it sends only now, with the connection full)
            late.sendall(encode_command([b"SET", b"late", value]))
            clients = list(proxy.server.clients)
            wait_for(lambda: all("upstream_full" in c.paused for c in clients), timeout=30)
            assert figures(proxy)["upstream_pool_pinned_clients"] == 0  # (all of them on the pool)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        for s in socks:
            s.sendall(encode_command([b"PING"]))
            assert read_frames(s, 2) == [b"+OK\r\n", b"+PONG\r\n"]
        for s in socks:
            s.close()


def test_a_kept_connection_that_redis_closed_is_not_reused(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(10)
        transaction = encode_command([b"MULTI"]) + encode_command([b"INCR", b"n"]) + encode_command([b"EXEC"])
        s.sendall(transaction)
        assert read_frames(s, 3)[2] == b"*1\r\n:1\r\n"
        s.sendall(encode_command([b"GET", b"n"]))  # (back on the pool; its own connection kept)
        assert read_frames(s, 1) == [b"$1\r\n1\r\n"]
        (kept,) = [c for c in proxies_clients(direct) if c.get("name") != "predis-pool"]
        direct.client_kill_filter(_id=kept["id"])
        # (once the proxy has read its end's close: before that, nothing can tell it is dead)
        (client,) = list(proxy.server.clients)
        wait_for(lambda: client.mux.dedicated.state == DOWN)
        s.sendall(transaction)  # (a new connection of its own, not the dead one)
        assert read_frames(s, 3) == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n:2\r\n"]


def test_hello_3_then_hello_2_while_replies_are_owed_leaves_the_shared_connections_alone(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    """A client owed a reply sends HELLO 3 and HELLO 2 at once: the second must not reach the
    RESP3 pool's connection (it would turn it to RESP2 under the other RESP3 clients)."""
    proxy = make_proxy(redis_server.url, upstream_pool=1, hot_tier="off")
    resp3 = proxy.client(protocol=3)
    assert resp3.set("x", "1")
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(10)
        s.sendall(
            encode_command([b"GET", b"x"])
            + encode_command([b"HELLO", b"3"])
            + encode_command([b"HELLO", b"2"])
            + encode_command([b"GET", b"x"])
        )
        frames = read_frames(s, 4)
        assert frames[0] == b"$1\r\n1\r\n" and frames[1].startswith(b"%") and frames[2].startswith(b"*")
        assert frames[3] == b"$1\r\n1\r\n"
    # The RESP3 pool's connection still speaks RESP3 to its other clients.
    assert isinstance(
        resp3.execute_command("DEBUG", "PROTOCOL", "map"), dict
    )  # (a RESP3 map, not a flat list)
