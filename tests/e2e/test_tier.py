"""The hot tier against a real Redis: served hits, every invalidation path, TTLs, the ACL rule,
tracking loss, Redis restart, and a staleness checker under concurrent writers and readers."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from prefetch.tier import entry_size
from proxy.embedded import EmbeddedRedis, free_port
from tests.helpers import ShiftedClock, no_retry, read_frames, wait_for


def tier_of(proxy: Any) -> Any:
    return proxy.server.tier


def active_proxy(make_proxy: Any, url: str, **kw: Any) -> Any:
    proxy = make_proxy(url, **kw)
    wait_for(lambda: tier_of(proxy).active)
    return proxy


def cache(proxy: Any, client: redis.Redis, *keys: str, db: int = 0) -> None:
    """Read keys through the proxy until the tier holds them."""
    for key in keys:
        client.get(key)
    wait_for(lambda: all((db, k.encode()) in tier_of(proxy).entries for k in keys))


@pytest.fixture
def tproxy(make_proxy: Any, redis_server: EmbeddedRedis, direct: redis.Redis) -> Any:
    return active_proxy(make_proxy, redis_server.url)


def test_gets_are_served_from_the_tier(tproxy: Any, direct: redis.Redis) -> None:
    direct.mset({"a": "1", "b": "2"})
    r = tproxy.client(protocol=2)
    cache(tproxy, r, "a", "b")
    tier = tier_of(tproxy)
    hits = tier.hits
    assert r.get("a") == b"1" and r.mget("a", "b") == [b"1", b"2"]
    assert tier.hits == hits + 3
    with r.pipeline(transaction=False) as pipe:  # tier replies interleaved with forwarded ones
        pipe.get("a").incr("n").get("b").echo("x").get("a")
        assert pipe.execute() == [b"1", 1, b"2", b"x", b"1"]
    figures = r.info("predis")
    assert figures["hot_tier_hits"] >= 5 and figures["hot_tier_demand_fills"] == 2
    assert figures["hot_tier_entries"] == 2 and figures["hot_tier_bytes_used"] > 0


def test_read_your_writes_on_every_connection(tproxy: Any, direct: redis.Redis) -> None:
    writer, reader = tproxy.client(), tproxy.client()
    for i in range(300):
        writer.set("k", i)
        assert writer.get("k") == str(i).encode()
        assert reader.get("k") == str(i).encode()
    assert tier_of(tproxy).hits > 0  # the reads were served from the tier in between writes


# (setup run directly, write through the proxy, keys whose GET must then match Redis)
WRITES: list[tuple[Callable[[redis.Redis], Any], Callable[[redis.Redis], Any], list[str]]] = [
    (lambda d: d.set("k", "v"), lambda r: r.set("k", "new"), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.append("k", "+"), ["k"]),
    (lambda d: d.set("k", "1"), lambda r: r.incr("k"), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.delete("k"), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.unlink("k"), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.getdel("k"), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.setrange("k", 0, "V"), ["k"]),
    (lambda d: d.mset({"k": "v", "k2": "w"}), lambda r: r.mset({"k": "1", "k2": "2"}), ["k", "k2"]),
    (
        lambda d: d.mset({"k": "v", "k2": "w"}),
        lambda r: r.pipeline(transaction=False).set("k2", "2").set("k", "1", px=100000).execute(),
        ["k", "k2"],
    ),
    (lambda d: d.mset({"k": "v", "k2": "w"}), lambda r: r.rename("k", "k2"), ["k", "k2"]),
    (lambda d: d.mset({"k": "v", "k2": "w"}), lambda r: r.copy("k", "k2", replace=True), ["k", "k2"]),
    (lambda d: d.set("k", "v"), lambda r: r.move("k", 1), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.execute_command("FLUSHDB"), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.execute_command("FLUSHALL"), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.swapdb(0, 1), ["k"]),
    (
        lambda d: d.set("k", "v"),
        lambda r: r.pipeline(transaction=True).set("k", "tx").incr("n").execute(),
        ["k"],
    ),
    (lambda d: d.set("k", "v"), lambda r: r.eval("redis.call('SET', 'k', 'lua'); return 1", 0), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.fcall("setk", 0), ["k"]),
    (
        lambda d: d.mset({"k": "v", "l": "x"}),
        lambda r: (r.delete("l"), r.rpush("l", 3, 1, 2), r.sort("l", store="k")),
        ["k"],
    ),
    # (GETEX's expiry of 1 ms has passed, however fast the machine, when both are read: the sleep
    # starts after Redis set it; a read within the millisecond could still see the value)
    (lambda d: d.set("k", "v"), lambda r: (r.getex("k", px=1), time.sleep(0.01)), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.expire("k", -1), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.set("k", "v2", keepttl=True), ["k"]),
    (lambda d: d.set("k", "v"), lambda r: r.set("k", "v3", ex=100), ["k"]),
    (lambda d: d.set("k", "v", ex=100), lambda r: r.persist("k"), ["k"]),
]
IDS = [
    "set",
    "append",
    "incr",
    "del",
    "unlink",
    "getdel",
    "setrange",
    "mset",
    "pipelined-sets",
    "rename",
    "copy",
    "move",
    "flushdb",
    "flushall",
    "swapdb",
    "multi-exec",
    "eval",
    "fcall",
    "sort-store",
    "getex",
    "expire",
    "set-keepttl",
    "set-ex",
    "persist",
]


SWAPDB_UNTRACKED = pytest.mark.xfail(
    strict=True,
    reason="Redis 7.0 sends no tracking invalidation for SWAPDB; only one through the proxy is seen",
)


@pytest.mark.parametrize("setup, write, keys", WRITES, ids=IDS)
@pytest.mark.parametrize("path", ["proxy", "direct"])
def test_every_write_invalidates(
    tproxy: Any,
    direct: redis.Redis,
    setup: Any,
    write: Any,
    keys: list[str],
    path: str,
    request: pytest.FixtureRequest,
) -> None:
    if path == "direct" and request.node.callspec.id.endswith("swapdb"):
        request.applymarker(SWAPDB_UNTRACKED)
    direct.function_load(
        "#!lua name=predistest\nredis.register_function('setk', function() return redis.call('SET', 'k', 'fn') end)",
        replace=True,
    )
    setup(direct)
    r = tproxy.client(protocol=2)
    cache(tproxy, r, *[k for k in keys if direct.exists(k)])
    if path == "proxy":
        # Through the proxy the key is dropped before the write's reply: the very next read is
        # right, with no help from tracking (its connection is not read meanwhile).
        with tracking_held(tproxy):
            write(r)
            assert [value(r, k) for k in keys] == [value(direct, k) for k in keys]
    else:
        write(direct)
        # A write the proxy did not see arrives by tracking, within the invalidation delay.
        wait_for(lambda: [value(r, k) for k in keys] == [value(direct, k) for k in keys], timeout=2)


@contextmanager
def tracking_held(proxy: Any) -> Iterator[None]:
    """Stop the proxy reading its invalidation connection for a while: what Redis sends there waits
    in the socket, so only the proxy's own invalidations can keep reads right meanwhile."""
    transport = proxy.server.channel.conn.transport

    async def reading(on: bool) -> None:
        transport.resume_reading() if on else transport.pause_reading()

    proxy.call(reading(False))
    try:
        yield
    finally:
        proxy.call(reading(True))


def test_a_streamed_write_drops_its_key_and_lands_whole(tproxy: Any, direct: redis.Redis) -> None:
    """A 32 MiB SET goes upstream in pieces as it arrives (proxy.requests: streamed), its key
    dropped from the tier before; a command whose arriving argument is a key is held whole."""
    import socket

    from proxy.resp import encode_command

    client, other = tproxy.client(), tproxy.client()
    direct.set("giant", "small")
    cache(tproxy, client, "giant")
    value = bytes(range(256)) * (1 << 17)  # 32 MiB
    before = client.info("predis")["commands_streamed"]
    client.set("giant", value)
    assert client.info("predis")["commands_streamed"] == before + 1
    assert direct.get("giant") == value and other.get("giant") == value and client.get("giant") == value
    # A large key arriving last (DEL small <key>): held whole and parsed, as the tier must know
    # the key by name to drop it (keys this long are never cached, but the rule is the rule).
    key = "k" * (768 << 10)  # (past STREAM_FROM)
    direct.set(key, "v")
    with socket.create_connection(("127.0.0.1", tproxy.port)) as s:
        s.settimeout(10)
        data = encode_command([b"DEL", b"other", key.encode()])
        for i in range(0, len(data), 64 * 1024):
            s.sendall(data[i : i + 64 * 1024])
        assert read_frames(s, 1) == [b":1\r\n"]
    assert client.info("predis")["commands_streamed"] == before + 1
    assert client.get(key) is None and direct.get(key) is None


def test_writes_queued_in_multi_are_dropped_at_exec(tproxy: Any, direct: redis.Redis) -> None:
    """MULTI, a write and EXEC sent as separate reads (as redis-cli sends them): a fill between the
    queued write and EXEC caches the old value, and EXEC must drop it before its reply reaches the
    client, without help from tracking."""
    for i, write in enumerate((["SET", "k", "new"], ["INCR", "n"], ["SET", "k", "v", "EX", "100"])):
        direct.mset({"k": f"old{i}", "n": i})
        tx, other = tproxy.client(single_connection_client=True), tproxy.client()
        tx.execute_command("MULTI")
        tx.execute_command(*write)  # QUEUED (which redis-py's SET callback reads as False)
        cache(tproxy, other, write[1])  # the old value, filled while the write waits in MULTI
        with tracking_held(tproxy):
            assert len(tx.execute_command("EXEC")) == 1
            assert tx.get(write[1]) == direct.get(write[1]) == other.get(write[1])
        tx.close()


def value(client: redis.Redis, key: str) -> Any:
    try:
        return client.get(key)
    except redis.ResponseError as exc:  # e.g. WRONGTYPE once SORT ... STORE made it a list
        return str(exc)


def test_ttl_is_never_outlived(tproxy: Any, direct: redis.Redis) -> None:
    r = tproxy.client()
    direct.set("t", "v", px=400)
    cache(tproxy, r, "t")
    assert r.get("t") == b"v"
    served_after_expiry = 0
    wait_for(lambda: not direct.exists("t"), timeout=30)
    # Redis says it is gone (expired): the proxy must agree at once, without waiting for tracking.
    for _ in range(50):
        served_after_expiry += r.get("t") is not None
    assert served_after_expiry == 0
    # PEXPIRE through the proxy shortens a cached key's life too.
    direct.set("t2", "v")
    cache(tproxy, r, "t2")
    r.pexpire("t2", 150)
    time.sleep(0.2)
    assert r.get("t2") is None


def test_expiry_without_any_write_uses_pttl(
    make_proxy: Any, redis_server: EmbeddedRedis, direct: redis.Redis
) -> None:
    """Redis deletes expired keys lazily; the tier must not rely on an invalidation for expiry."""
    proxy = active_proxy(make_proxy, redis_server.url)
    r = proxy.client()
    direct.set("e", "v", px=300)
    t0 = time.monotonic()
    cache(proxy, r, "e")
    entry = tier_of(proxy).entries[(0, b"e")]
    assert entry.expires - tier_of(proxy).clock() <= 0.3
    while time.monotonic() - t0 < 0.35:
        time.sleep(0.01)
    assert r.get("e") is None


def test_redis_eviction_invalidates(tproxy: Any, direct: redis.Redis) -> None:
    """A key Redis evicts under maxmemory is dropped from the tier (Redis reports it by tracking)."""
    direct.set("victim", "v")
    r = tproxy.client()
    cache(tproxy, r, "victim")
    direct.config_set("maxmemory-policy", "allkeys-random")
    direct.config_set("maxmemory", str(int(direct.info("memory")["used_memory"]) + 2 * 1024 * 1024))
    try:
        i = 0
        while direct.exists("victim"):
            direct.set(f"filler{i}", b"x" * 10_000)
            i += 1
            assert i < 100_000
        wait_for(lambda: r.get("victim") is None, timeout=2)
        assert tier_of(tproxy).invalidations_tracking >= 1
    finally:
        direct.config_set("maxmemory", "0")
        direct.config_set("maxmemory-policy", "noeviction")


def test_max_staleness_bound(make_proxy: Any, redis_server: EmbeddedRedis, direct: redis.Redis) -> None:
    clock = ShiftedClock(time.monotonic)
    proxy = active_proxy(make_proxy, redis_server.url, hot_tier_max_staleness=30, clock=clock)
    r = proxy.client()
    direct.set("s", "v")
    cache(proxy, r, "s")
    hits = tier_of(proxy).hits
    assert r.get("s") == b"v" and tier_of(proxy).hits == hits + 1
    clock.advance(31)  # past the bound (the refresh its hit asked for read it 30 s ago, at most)
    assert r.get("s") == b"v" and tier_of(proxy).hits == hits + 1  # re-read from Redis, not served


def test_fills_follow_each_clients_database(tproxy: Any, direct: redis.Redis) -> None:
    """The filler's connection keeps the last database it selected; fills alternating between
    databases (and a client that changes database with SELECT) must still read the right one."""
    for db in range(3):
        redis.Redis(port=direct.connection_pool.connection_kwargs["port"], db=db).set("same", f"db{db}")
    clients = [tproxy.client(db=db) for db in range(3)]
    for _ in range(3):
        for c in clients:
            c.get("same")
    wait_for(lambda: all((db, b"same") in tier_of(tproxy).entries for db in range(3)))
    for db, c in enumerate(clients):
        assert c.get("same") == f"db{db}".encode()
    hopper = tproxy.client()
    for db in (2, 0, 1, 2):
        hopper.execute_command("SELECT", db)
        assert hopper.get("same") == f"db{db}".encode()
    assert tier_of(tproxy).hits >= 7


def test_eviction_spares_the_keys_read_last(
    make_proxy: Any, redis_server: EmbeddedRedis, direct: redis.Redis
) -> None:
    """LRU through the proxy: hits served on the single-GET fast path and on the GET-run path
    (a pipeline) stamp their entries, so the key evicted by a fill is the one read least
    recently, not the one filled first."""
    value = "v" * 100
    for k in "abcde":
        direct.set(k, value)
    room = 3 * entry_size(b"a", value.encode()) + 10  # three entries
    proxy = active_proxy(make_proxy, redis_server.url, hot_tier_bytes=room, hot_tier_policy="lru")
    c = proxy.client()
    for k in "abc":
        cache(proxy, c, k)
    hits = tier_of(proxy).hits
    assert c.get("a") == value.encode()  # a single GET, served: a is now the most recent
    assert tier_of(proxy).hits == hits + 1
    cache(proxy, c, "d")  # evicts b, read least recently
    assert {k for _, k in tier_of(proxy).entries} == {b"a", b"c", b"d"}
    pipe = c.pipeline(transaction=False)
    pipe.get("c").get("a")
    assert pipe.execute() == [value.encode()] * 2  # one read of two GETs, both served
    assert tier_of(proxy).hits == hits + 3
    cache(proxy, c, "e")  # evicts d: c and a were read since it was filled
    assert {k for _, k in tier_of(proxy).entries} == {b"a", b"c", b"e"}


def test_refresh_ahead_keeps_a_hot_key_served(
    make_proxy: Any, redis_server: EmbeddedRedis, direct: redis.Redis
) -> None:
    """A key read continuously is re-read in the background after half the staleness bound, so it
    stays in the tier across many bounds instead of missing once per bound; a write still shows."""
    clock = ShiftedClock(time.monotonic)
    proxy = active_proxy(make_proxy, redis_server.url, hot_tier_max_staleness=30, clock=clock)
    r = proxy.client()
    direct.set("hot", "v0")
    cache(proxy, r, "hot")
    tier = tier_of(proxy)
    hits, misses, refreshes = tier.hits, tier.misses, tier.refreshes
    for _ in range(5):  # five times 0.8 bounds: without refreshes it would be stale from the 2nd on
        clock.advance(0.8 * 30)  # past the refresh point (0.5-0.75 of the bound), not the bound
        due = tier.entries[(0, b"hot")].filled + 30
        assert r.get("hot") == b"v0"  # served, and a re-read asked for
        wait_for(lambda due=due: tier.entries[(0, b"hot")].filled + 30 > due)  # (the refresh landed)
    assert tier.refreshes - refreshes == 5
    assert tier.misses == misses and tier.hits - hits == 5, (tier.misses - misses, tier.hits - hits)
    r.set("hot", "v1")
    assert r.get("hot") == b"v1"
    assert r.info("predis")["hot_tier_refreshes"] == tier.refreshes


def test_acl_rule_tier_never_widens_rights(tproxy: Any, direct: redis.Redis) -> None:
    direct.acl_setuser("alice", enabled=True, passwords=["+a"], keys=["secret:*"], commands=["+@all"])
    direct.acl_setuser("bob", enabled=True, passwords=["+b"], keys=["public:*"], commands=["+@all"])
    direct.set("secret:x", "s3cr3t")
    alice = tproxy.client(username="alice", password="a")
    cache(tproxy, alice, "secret:x")
    assert tier_of(tproxy).entries[(0, b"secret:x")].user == "alice"
    bob = tproxy.client(username="bob", password="b")
    with pytest.raises(redis.exceptions.NoPermissionError):
        bob.get("secret:x")  # Redis refuses bob: so must the proxy, cached value or not
    # A server that requires a password: an unauthenticated connection gets NOAUTH, never a cached value.
    direct.set("open", "v")
    default = tproxy.client()
    cache(tproxy, default, "open")
    direct.config_set("requirepass", "pw")
    try:
        anon = redis.Redis(host=tproxy.host, port=tproxy.port, protocol=2, **no_retry())
        with pytest.raises(redis.AuthenticationError):
            anon.get("open")
    finally:
        redis.Redis(port=direct.connection_pool.connection_kwargs["port"], password="pw").config_set(
            "requirepass", ""
        )


def test_tracking_loss_flushes_and_stops_serving(tproxy: Any, direct: redis.Redis) -> None:
    r = tproxy.client()
    direct.set("k", "v")
    cache(tproxy, r, "k")
    drops = tproxy.server.channel.drops
    assert direct.execute_command("CLIENT", "KILL", "ID", _tracking_id(direct)) == 1
    wait_for(lambda: tproxy.server.channel.drops == drops + 1)
    # Flushed at once; while tracking is down every read goes to Redis.
    assert not tier_of(tproxy).entries or tier_of(tproxy).active
    direct.set("k", "changed")
    assert r.get("k") == b"changed"
    wait_for(lambda: tier_of(tproxy).active)  # and it comes back by itself
    cache(tproxy, r, "k")
    assert r.get("k") == b"changed"


def _tracking_id(direct: redis.Redis) -> int:
    ids = [int(c["id"]) for c in direct.client_list() if c.get("name") == "predis-tracking"]
    assert len(ids) == 1, "exactly one tracking connection (closed proxies must not leave theirs)"
    return ids[0]


def test_redis_restart_flushes_the_tier(make_proxy: Any, tmp_path: Any) -> None:
    port = free_port()
    server = EmbeddedRedis(port=port, workdir=tmp_path).start()
    try:
        proxy = active_proxy(make_proxy, server.url, connect_timeout=0.5)
        r = proxy.client(socket_timeout=5)
        redis.Redis(port=port).set("k", "before")
        cache(proxy, r, "k")
        server.kill()
        wait_for(lambda: not tier_of(proxy).active)
        assert not tier_of(proxy).entries
        server = EmbeddedRedis(port=port, workdir=tmp_path).start()  # comes back empty (no persistence)
        wait_for(lambda: tier_of(proxy).active, timeout=10)
        value = None
        for _ in range(3):
            try:
                value = r.get("k")
                break
            except redis.ResponseError:
                time.sleep(0.1)  # in-flight errors from the outage
        assert value is None  # the old cached value is not served
    finally:
        server.close()


def test_prefetch_api_and_statistics(tproxy: Any, direct: redis.Redis) -> None:
    direct.mset({f"p{i}": str(i) for i in range(10)})
    inserted = tproxy.call(tproxy.server.prefetch([b"p%d" % i for i in range(10)] + [b"missing"]))
    assert inserted == 10
    r = tproxy.client()
    assert r.get("p3") == b"3" and r.get("p3") == b"3"
    figures = tier_of(tproxy).snapshot()
    assert figures["prefetch_fills"] == 10 and figures["prefetched_hits"] == 1


@pytest.mark.parametrize("prefetch", ["none", "markov"])
def test_staleness_checker(
    make_proxy: Any, direct: redis.Redis, redis_server: EmbeddedRedis, prefetch: str
) -> None:
    """Concurrent writers through the proxy and directly, readers through the proxy, each key with
    one writer so its versions are ordered. For proxy-written keys no read may return a version
    older than the newest one acknowledged before the read began; for directly written keys a stale
    read is allowed only within the invalidation delay, which is measured and reported. With live
    prefetching on (Markov, its prefetches and hinted reads filling keys the writers keep
    invalidating), the same rules hold, and prefetched values are among those read."""
    extra = {"prefetch": prefetch, "prefetch_engine_priority": "normal", "prefetch_max_age": 60.0}
    tproxy = active_proxy(make_proxy, redis_server.url, **(extra if prefetch != "none" else {}))
    if prefetch != "none":
        wait_for(lambda: tproxy.server.prediction.ready, timeout=30)
    proxy_keys = [f"pk{i}" for i in range(8)]
    direct_keys = [f"dk{i}" for i in range(8)]
    acks: dict[str, list[tuple[float, int]]] = {k: [(0.0, 0)] for k in proxy_keys + direct_keys}
    direct.mset({k: 0 for k in acks})
    reads: list[tuple[str, float, int]] = []
    stop = threading.Event()

    def writer(keys: list[str], client: redis.Redis) -> None:
        version = 0
        rng = random.Random(len(keys[0]))
        while not stop.is_set():
            version += 1
            key = rng.choice(keys)
            client.set(key, version)
            acks[key].append((time.monotonic(), version))
            time.sleep(0.001)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        client = tproxy.client()
        while not stop.is_set():
            keys = rng.sample(proxy_keys + direct_keys, rng.choice([1, 1, 3]))
            start = time.monotonic()
            values = [client.get(keys[0])] if len(keys) == 1 else client.mget(keys)
            for key, value in zip(keys, values, strict=True):
                reads.append((key, start, int(value)))

    direct_writer = redis.Redis(port=redis_server.port)
    threads = [
        threading.Thread(target=writer, args=(proxy_keys[:4], tproxy.client())),
        threading.Thread(target=writer, args=(proxy_keys[4:], tproxy.client())),
        threading.Thread(target=writer, args=(direct_keys, direct_writer)),
        *(threading.Thread(target=reader, args=(s,)) for s in range(3)),
    ]
    for t in threads:
        t.start()
    # A count of reads, not a duration: the same history on a fast machine and a slow one.
    tier = tier_of(tproxy)
    wait_for(
        lambda: (
            len(reads) >= 3000 and tier.hits >= 300 and (prefetch == "none" or tier.prefetched_hits >= 50)
        ),
        timeout=120,
    )
    stop.set()
    for t in threads:
        t.join(10)

    # The invalidation delay for a write the proxy does not see, measured on its own.
    r = tproxy.client()
    direct.set("probe", "start")
    delays = []
    for i in range(20):
        cache(tproxy, r, "probe")
        t0 = time.monotonic()
        direct.set("probe", f"v{i}")
        # Without tracking the old value would be served for the whole 10 s staleness bound.
        while r.get("probe") != f"v{i}".encode():
            assert time.monotonic() - t0 < 5, "the direct write never reached the tier"
        delays.append(time.monotonic() - t0)
    delay = max(delays)

    stale_proxy, lags = 0, []
    for key, start, value in reads:
        newest_acked = max(v for t, v in acks[key] if t <= start)
        if value >= newest_acked:
            continue
        if key in proxy_keys:
            stale_proxy += 1
        else:
            first_newer_ack = min(t for t, v in acks[key] if v > value)
            lags.append(start - first_newer_ack)
    hits = tier_of(tproxy).hits
    print(
        f"\nstaleness checker ({prefetch}): {len(reads)} reads, {hits} tier hits ({tier.prefetched_hits} of "
        f"prefetched entries), stale reads of proxy-written keys: "
        f"{stale_proxy}; of direct-written keys: {len(lags)} (max lag {max(lags, default=0) * 1000:.2f} ms); "
        f"measured invalidation delay max {delay * 1000:.2f} ms, median {sorted(delays)[10] * 1000:.2f} ms"
    )
    assert stale_proxy == 0
    # The guarantee for a write the proxy does not see: never served past the staleness bound
    # (the invalidation usually ends it far sooner: the figures above, reported, not asserted,
    # since a stale read's lag under load and a delay measured apart are two timings).
    assert all(lag <= tier_of(tproxy).max_staleness for lag in lags), max(lags)


def test_partly_held_mget_is_forwarded_whole_and_counted_as_misses(tproxy: Any, direct: redis.Redis) -> None:
    """An MGET the tier cannot serve whole goes to Redis whole: none of its keys is a hit (no
    counter, no LRU touch, no refresh), every one a miss, and the key not held is filled."""
    direct.mset({"m1": "1", "m2": "2", "m3": "3"})
    r = tproxy.client()
    cache(tproxy, r, "m1", "m2")
    tier = tier_of(tproxy)
    hits, misses = tier.hits, tier.misses
    last = tier.entries[(0, b"m1")].last
    assert r.mget("m1", "m2", "m3") == [b"1", b"2", b"3"]
    assert (tier.hits, tier.misses) == (hits, misses + 3)
    assert tier.entries[(0, b"m1")].last == last
    wait_for(lambda: (0, b"m3") in tier.entries)
    assert r.mget("m1", "m2", "m3") == [b"1", b"2", b"3"]
    assert tier.hits == hits + 3


def test_long_get_batches_bypass_the_tier(tproxy: Any, direct: redis.Redis) -> None:
    direct.mset({f"b{i}": str(i) for i in range(12)})
    r = tproxy.client()
    cache(tproxy, r, *[f"b{i}" for i in range(12)])
    tier = tier_of(tproxy)
    hits, bypassed = tier.hits, tier.bypassed
    with r.pipeline(transaction=False) as pipe:
        for i in range(4):
            pipe.get(f"b{i}")
        assert pipe.execute() == [str(i).encode() for i in range(4)]
    assert tier.hits == hits + 4
    with r.pipeline(transaction=False) as pipe:
        for i in range(12):
            pipe.get(f"b{i}")
        assert pipe.execute() == [str(i).encode() for i in range(12)]
    assert tier.hits == hits + 4 and tier.bypassed == bypassed + 12  # forwarded: cheaper than serving


def test_simple_key_slices_agree_with_the_full_key_specs(tproxy: Any) -> None:
    """The one-step path for plain writes must name exactly the keys the key specs name."""
    from proxy.keyspace import _keys_for

    table = tproxy.server.command_table
    args_for = {
        b"SET": [b"SET", b"k", b"v", b"EX", b"10"],
        b"MSET": [b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"],
        b"DEL": [b"DEL", b"a", b"b", b"c"],
        b"RENAME": [b"RENAME", b"a", b"b"],
        b"INCR": [b"INCR", b"n"],
        b"HSET": [b"HSET", b"h", b"f", b"v"],
        b"LPUSH": [b"LPUSH", b"l", b"x", b"y"],
    }
    assert set(args_for) - {b"RENAME"} <= set(table.simple)  # RENAME has two key specs: the full path
    for name, args in args_for.items():
        info = table.commands[name]
        full = [k for spec in info.specs for k in (_keys_for(spec, args) or [])]
        assert table.effect(name, args) == ("keys", full), name


@pytest.mark.parametrize("tier", ["cpu", "off"])
def test_reads_of_gets_only_take_the_fast_framing(
    make_proxy: Any, redis_server: EmbeddedRedis, direct: redis.Redis, tier: str
) -> None:
    """A read made only of GETs skips hiredis (``get_run_keys``): with and without the tier, every
    shape of it gets Redis's replies in order, keys holding CRLF and binary bytes included, and
    with the tier a read of misses is counted once and filled, a read of hits is served, and a
    read of half hits takes the general path."""
    import socket

    from proxy.resp import encode_command

    keys = [b"r%d" % i for i in range(20)] + [b"line\r\nbreak", b"\x00\xff$3\r\n", b""]
    direct.mset({k: b"v-" + k for k in keys})
    proxy = (
        active_proxy(make_proxy, redis_server.url)
        if tier == "cpu"
        else make_proxy(redis_server.url, hot_tier="off")
    )

    def run(sock: socket.socket, names: list[bytes]) -> None:
        sock.sendall(b"".join(encode_command([b"GET", k]) for k in names))
        want = [b"$-1\r\n" if k == b"nokey" else b"$%d\r\nv-%s\r\n" % (len(k) + 2, k) for k in names]
        assert read_frames(sock, len(names)) == want

    before = proxy.server.stats.commands_forwarded
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(10)
        run(s, keys[:4])  # misses (with the tier: counted, filled)
        run(s, keys[20:] + [b"nokey"])  # CRLF, binary and empty keys; a key Redis lacks
        run(s, keys[:20])  # longer than the tier's max batch
        if tier == "cpu":
            t = tier_of(proxy)
            assert t.misses >= 4 and t.bypassed == 20
            wait_for(lambda: all((0, k) in t.entries for k in keys[:4]))
            hits, misses = t.hits, t.misses
            run(s, keys[:4])  # every one a hit: served
            assert (t.hits, t.misses) == (hits + 4, misses)
            run(s, keys[2:6])  # half hits: the general path serves two, forwards two
            assert (t.hits, t.misses) == (hits + 6, misses + 2)
            run(s, keys[8:12])  # all misses: one count each
            assert (t.hits, t.misses) == (hits + 6, misses + 6)
    forwarded = proxy.server.stats.commands_forwarded - before
    assert forwarded == (4 + 4 + 20 + 2 + 4 if tier == "cpu" else 4 + 4 + 20)


@pytest.mark.parametrize("tier", ["cpu", "off"])
def test_reads_of_sets_only_take_the_fast_framing(
    make_proxy: Any, redis_server: EmbeddedRedis, direct: redis.Redis, tier: str
) -> None:
    """A read made only of plain SETs skips hiredis (``set_run_keys``): with and without the tier,
    Redis gets every write and the client every reply in order, values holding CRLF or of 64 KiB
    (the general path) included; with the tier, every written key is dropped before the replies
    come back, so the next read through the proxy sees the new value."""
    import socket

    from proxy.resp import encode_command

    keys = [b"w%d" % i for i in range(12)]
    direct.mset({k: b"old-" + k for k in keys})
    proxy = (
        active_proxy(make_proxy, redis_server.url)
        if tier == "cpu"
        else make_proxy(redis_server.url, hot_tier="off")
    )
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(10)
        if tier == "cpu":
            t = tier_of(proxy)
            for k in keys:  # fill the tier with the old values and check they are served
                s.sendall(encode_command([b"GET", k]))
                assert read_frames(s, 1) == [b"$%d\r\nold-%s\r\n" % (len(k) + 4, k)]
            wait_for(lambda: all((0, k) in t.entries for k in keys))
            dropped = t.invalidations_local
        shapes = [
            [[b"SET", k, b"new-" + k] for k in keys[:8]],  # the fast path
            [[b"set", keys[8], b"a\r\nb"], [b"SET", keys[9], b"v"]],  # a value with CRLF
            [[b"SET", keys[10], b"x" * (1 << 16)], [b"Set", keys[11], b"y"]],  # a 64 KiB value
        ]
        for cmds in shapes:
            s.sendall(b"".join(encode_command(c) for c in cmds))
            assert read_frames(s, len(cmds)) == [b"+OK\r\n"] * len(cmds)
            # Read back through the proxy at once: the tier must not answer with the old value.
            s.sendall(b"".join(encode_command([b"GET", c[1]]) for c in cmds))
            assert read_frames(s, len(cmds)) == [b"$%d\r\n%s\r\n" % (len(c[2]), c[2]) for c in cmds]
        if tier == "cpu":
            assert t.invalidations_local - dropped == len(keys)
    assert direct.get(keys[0]) == b"new-w0" and direct.get(keys[8]) == b"a\r\nb"


def test_a_hit_waits_for_the_replies_ahead_of_it(tproxy: Any, direct: redis.Redis) -> None:
    """One GET of a held key, read while a blocked command's reply is still owed, is answered
    after that reply, whichever spelling of GET finds it (the request index's or the parser's)."""
    import socket

    from proxy.resp import encode_command

    direct.set("h", "v")
    cache(tproxy, tproxy.client(protocol=2), "h")
    t = tier_of(tproxy)
    with socket.create_connection((tproxy.host, tproxy.port)) as s:
        s.settimeout(10)
        s.sendall(encode_command([b"PING"]))  # Redis accepts the connection: the tier may serve it
        assert read_frames(s, 1) == [b"+PONG\r\n"]
        for spelling in (b"GET", b"get"):
            s.sendall(encode_command([spelling, b"h"]))
            assert read_frames(s, 1) == [b"$1\r\nv\r\n"]
            hits = t.hits
            s.sendall(encode_command([b"BLPOP", b"nolist", b"0.3"]))
            time.sleep(0.1)
            s.sendall(encode_command([spelling, b"h"]))
            assert read_frames(s, 2) == [b"*-1\r\n", b"$1\r\nv\r\n"]
            assert t.hits == hits + 1
