"""The hot tier's logic without sockets: policies (one shared suite), byte bound, TTL, staleness,
the fill race, users, and the device store's allocator on NumPy."""

from __future__ import annotations

import itertools
import sys
import tracemalloc
from collections.abc import Hashable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from prefetch.policies import LRU, POLICIES, S3FIFO, EvictionPolicy, StampedLRU, make_policy
from prefetch.store import DeviceStore, HostStore, load_cupy, make_store, to_host
from prefetch.tier import ENTRY_OVERHEAD, HotTier, entry_size, get_request


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fill(
    tier: HotTier,
    key: bytes,
    value: bytes,
    pttl: int = -1,
    db: int = 0,
    user: str = "default",
    prefetched: bool = False,
) -> bool:
    token = tier.begin_fill(db, key)
    assert token is not None
    return tier.complete_fill(db, key, token, value, pttl, tier.clock(), user, prefetched)


def make_tier(capacity: int = 10_000, policy: str = "lru", **kw: object) -> HotTier:
    tier = HotTier(capacity, policy=policy, clock=Clock(), **kw)  # type: ignore[arg-type]
    tier.active = True
    return tier


# ---------------------------------------------------------------- the shared policy suite


class SelfStampedLRU(StampedLRU):
    """StampedLRU with its owner's stamps kept beside it, a tick per insert and touch: the
    shared policy suite's calls become what the tier does on a fill and a hit."""

    def __init__(self, capacity: int) -> None:
        self.stamps: dict[Hashable, float] = {}
        self.tick = 0
        super().__init__(capacity, self.stamps.__getitem__)

    def insert(self, key: Hashable, size: int) -> None:
        self.tick += 1
        self.stamps[key] = self.tick
        super().insert(key, size)

    def touch(self, key: Hashable) -> None:
        if key in self.stamps:
            self.tick += 1
            self.stamps[key] = self.tick


# Every policy, and StampedLRU (the tier's LRU) read from stamps kept beside it.
SUITE = [*sorted(POLICIES), "lru-stamped"]


def new_policy(name: str, capacity: int) -> EvictionPolicy:
    return SelfStampedLRU(capacity) if name == "lru-stamped" else make_policy(name, capacity)


@pytest.fixture(params=SUITE)
def suite_policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=sorted(POLICIES))
def policy_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_policy_evicts_each_key_once_and_forgets_removed(suite_policy: str) -> None:
    p = new_policy(suite_policy, 1000)
    for k in range(10):
        p.insert(k, 10)
    p.remove(3)
    p.touch(5)
    evicted = [p.victim() for _ in range(9)]
    assert sorted(evicted) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert len(p) == 0


def test_policy_keeps_a_hot_key_over_a_scan(suite_policy: str) -> None:
    p = new_policy(suite_policy, 100)
    p.insert("hot", 10)
    for i in range(50):
        p.touch("hot")
        p.insert(f"scan{i}", 10)
        if len(p) > 5:
            assert p.victim() != "hot"


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(SUITE),
    st.lists(st.tuples(st.integers(0, 20), st.sampled_from("itr")), max_size=200),
)
def test_policy_tracks_exactly_the_live_keys(name: str, ops: list[tuple[int, str]]) -> None:
    p = new_policy(name, 200)
    live: set[Hashable] = set()
    for key, op in ops:
        if op == "i":
            p.insert(key, 10)
            live.add(key)
        elif op == "t" and key in live:
            p.touch(key)
        elif op == "r":
            p.remove(key)
            live.discard(key)
        assert len(p) == len(live)
    while live:
        live.remove(p.victim())


def test_lru_order_is_known() -> None:
    for p in (LRU(100), SelfStampedLRU(100)):
        for k in "abc":
            p.insert(k, 1)
        p.touch("a")
        assert [p.victim() for _ in range(3)] == ["b", "c", "a"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from("iiitttrv")), max_size=400))
def test_stamped_lru_evicts_what_lru_evicts(ops: list[tuple[int, str]]) -> None:
    """The tier's LRU, reading last-access stamps its owner keeps (as the tier's entries do, with
    no call per hit), picks the same victims as the OrderedDict LRU told of every access, and its
    heap stays within twice the live keys however many are removed."""
    stamps: dict[Hashable, float] = {}
    stamped = StampedLRU(0, stamp=stamps.__getitem__)
    lru = LRU(0)
    live: set[int] = set()
    for tick, (key, op) in enumerate(ops):
        if op == "i" and key not in live:
            stamps[key] = tick
            stamped.insert(key, 1)
            lru.insert(key, 1)
            live.add(key)
        elif op == "t" and key in live:
            stamps[key] = tick  # the owner's record only: StampedLRU is not called
            lru.touch(key)
        elif op == "r" and key in live:
            stamped.remove(key)
            lru.remove(key)
            live.discard(key)
        elif op == "v" and live:
            victim = lru.victim()
            assert stamped.victim() == victim
            live.discard(victim)
        assert len(stamped) == len(lru) == len(live)
        assert len(stamped._heap) <= 2 * len(live) + 65
    while live:
        victim = lru.victim()
        assert stamped.victim() == victim
        live.discard(victim)


def test_stamped_lru_heap_is_rebuilt_under_churn_without_evictions() -> None:
    """Invalidations and refills with no eviction between them (a tier that never fills up)
    leave dead heap items; they must not pile up."""
    p = SelfStampedLRU(0)
    for k in range(10):
        p.insert(k, 1)
    for i in range(5000):
        p.remove(i % 10)
        p.insert(i % 10, 1)
    assert len(p._heap) <= 2 * len(p) + 65
    assert sorted(p.victim() for _ in range(10)) == list(range(10))


def test_s3fifo_one_hit_wonders_leave_from_small_and_ghosts_return_to_main() -> None:
    p = S3FIFO(100)  # small queue holds 10 bytes' worth
    p.insert("keep", 10)
    p.touch("keep")
    for i in range(3):
        p.insert(f"once{i}", 10)
    # Small is over its share: "keep" (hit) moves to main, "once0" (never hit) is evicted.
    assert p.victim() == "once0"
    assert "keep" in p.main and "once0" in p.ghost
    p.insert("once0", 10)  # seen recently: straight into main
    assert "once0" in p.main


def test_s3fifo_frequency_stops_at_its_cap() -> None:
    """Hits count up to MAX_FREQ (3) and no further: a key hit ten times in main outlives three
    passes of main's clock, not ten."""
    p = S3FIFO(100)
    p.insert("h", 10)
    p.touch("h")
    p.insert("x", 10)
    assert p.victim() == "x"  # h (hit) moved to main, x to the ghost
    for _ in range(10):
        p.touch("h")
    evicted_at = None
    for r in range(8):
        k = f"k{r}"
        p.insert(k, 10)
        assert p.victim() == k  # a new key leaves small unhit, to the ghost...
        p.insert(k, 10)  # ...and comes back straight into main, behind h
        if p.victim() == "h":  # each pass spends one of h's counts
            evicted_at = r
            break
    assert evicted_at == S3FIFO.MAX_FREQ


# ---------------------------------------------------------------- the tier


def test_hit_miss_and_user_rule() -> None:
    tier = make_tier()
    assert tier.get(0, b"k", "default") is None
    assert fill(tier, b"k", b"v", user="app")
    assert tier.get(0, b"k", "app") == b"v"
    assert tier.get(0, b"k", "default") is None  # another ACL user is never served
    assert tier.get(1, b"k", "app") is None  # another database
    assert (tier.hits, tier.misses) == (1, 3)


def test_inactive_tier_neither_serves_nor_fills() -> None:
    tier = make_tier()
    assert fill(tier, b"k", b"v")
    tier.active = False
    assert tier.get(0, b"k", "default") is None
    assert tier.begin_fill(0, b"x") is None


def test_fill_race_invalidation_in_flight_wins() -> None:
    tier = make_tier()
    token = tier.begin_fill(0, b"k")
    assert token is not None and tier.begin_fill(0, b"k") is None  # deduplicated
    tier.invalidate([b"k"])  # a write landed while the read was in flight
    assert not tier.complete_fill(0, b"k", token, b"old", -1, tier.clock(), "default")
    assert b"k" not in [k for _, k in tier.entries] and tier.fills_dropped == 1
    # A newer fill started after the invalidation is the one that counts.
    t1 = tier.begin_fill(0, b"k")
    tier.flush()
    t2 = tier.begin_fill(0, b"k")
    assert t1 is not None and t2 is not None
    assert not tier.complete_fill(0, b"k", t1, b"old", -1, tier.clock(), "default")
    assert tier.complete_fill(0, b"k", t2, b"new", -1, tier.clock(), "default")
    assert tier.get(0, b"k", "default") == b"new"


def test_ttl_from_pttl_counted_from_the_send_time() -> None:
    tier = make_tier()
    clock = tier.clock
    assert isinstance(clock, Clock)
    token = tier.begin_fill(0, b"k")
    assert token is not None
    sent = clock.t
    clock.t += 0.3  # the reply took 300 ms
    assert tier.complete_fill(0, b"k", token, b"v", 1000, sent, "default")
    clock.t = sent + 0.999
    assert tier.get(0, b"k", "default") == b"v"
    clock.t = sent + 1.0
    assert tier.get(0, b"k", "default") is None and not tier.entries
    # PTTL -2: the key vanished between the two reads.
    assert not fill(tier, b"gone", b"v", pttl=-2)


def test_tier_evicts_the_entry_read_least_recently(policy_name: str) -> None:
    """Through the tier (hits stamped on the entries, StampedLRU for LRU): of three entries, the
    one read last survives a fourth fill, and under LRU the one filled first and never read
    again goes."""
    tier = make_tier(3 * entry_size(b"a", b"v" * 100), policy=policy_name, max_staleness=1e6)
    for key in (b"a", b"b", b"c"):
        tier.clock.t += 1  # type: ignore[attr-defined]
        assert fill(tier, key, b"v" * 100)
    tier.clock.t += 1  # type: ignore[attr-defined]
    assert tier.get(0, b"a", "default") is not None
    tier.clock.t += 1  # type: ignore[attr-defined]
    assert fill(tier, b"d", b"v" * 100)
    held = {k for _, k in tier.entries}
    assert b"a" in held and b"d" in held and len(held) == 3
    if policy_name == "lru":
        assert held == {b"a", b"c", b"d"}


def test_max_staleness() -> None:
    tier = make_tier(max_staleness=5.0)
    assert fill(tier, b"k", b"v")
    tier.clock.t += 5.01  # type: ignore[attr-defined]
    assert tier.get(0, b"k", "default") is None


def test_write_reply_drops_a_fill_begun_after_the_write_was_forwarded() -> None:
    tier = make_tier()
    assert fill(tier, b"k", b"old")
    tier.invalidate([b"k"])  # the write is forwarded
    begun = tier.fills_begun
    tier.invalidate_if_filled([b"k"], begun)  # its reply, nothing filled since: a no-op
    assert fill(tier, b"other", b"o")
    # A reader's fill begun after the forward, whose read Redis ran before the write:
    assert fill(tier, b"k", b"old")
    tier.invalidate_if_filled([b"k"], begun)  # the write's reply drops it before the client sees it
    assert (0, b"k") not in tier.entries and (0, b"other") in tier.entries
    before = tier.fills_begun
    assert fill(tier, b"k", b"new")  # after the reply: the new value
    tier.invalidate_if_filled([b"unrelated"], tier.fills_begun)
    assert tier.get(0, b"k", "default") == b"new" and tier.fills_begun == before + 1


def test_refresh_of_an_unchanged_value_renews_the_entry_in_place(policy_name: str) -> None:
    """A refresh that reads back the same value keeps the entry, its hit count, its request-index
    slot and its place in the policy's order (a refresh is neither a read nor an insert: the next
    eviction is the one a twin tier without the refresh makes); only its deadlines move. A changed
    value or another user's read replaces the entry."""
    capacity = 3 * entry_size(b"k0", b"v") + 10  # room for three entries
    tier, twin = (make_tier(capacity=capacity, policy=policy_name, max_staleness=4.0) for _ in range(2))
    for t in (tier, twin):
        for key in (b"k0", b"k1", b"k2", b"k0", b"k1", b"k2"):  # fills, then one hit each
            assert t.get(0, key, "default") == b"v" or fill(t, key, b"v")
        t.clock.t += 3.5  # type: ignore[attr-defined]
    entry = tier.entries[(0, b"k0")]
    assert fill(tier, b"k0", b"v", pttl=60_000)  # the refresh
    assert tier.entries[(0, b"k0")] is entry and tier.requests[0][entry.request] is entry
    assert entry.hits == 1 and entry.filled == tier.clock() and entry.expires == tier.clock() + 60.0
    assert entry.until == tier.clock() + 4.0 and tier.used == twin.used
    for t in (tier, twin):
        assert fill(t, b"k3", b"v")  # evicts one entry
    assert set(tier.entries) == set(twin.entries) and len(tier.entries) == 3
    if (0, b"k0") in tier.entries:
        tier.clock.t += 3.9  # type: ignore[attr-defined]  (7.4 s after the first fill: still served)
        assert tier.get(0, b"k0", "default") == b"v"
    assert fill(tier, b"k0", b"w")  # the value changed: a new entry
    assert tier.entries[(0, b"k0")] is not entry and tier.get(0, b"k0", "default") == b"w"
    renewed = tier.entries[(0, b"k0")]
    assert fill(tier, b"k0", b"w", user="other")  # another user's read: a new entry, for that user
    assert tier.entries[(0, b"k0")] is not renewed and tier.entries[(0, b"k0")].user == "other"


def test_refresh_ahead_after_half_the_staleness_bound() -> None:
    due_at = []
    jittered = make_tier(max_staleness=4.0)
    for i in range(200):
        assert fill(jittered, b"j%d" % i, b"v")
        due_at.append(jittered.entries[(0, b"j%d" % i)].refresh_at - jittered.clock())
    assert min(due_at) >= 2.0 and max(due_at) < 3.0 and max(due_at) - min(due_at) > 0.8  # spread out
    tier = make_tier(max_staleness=4.0)
    assert fill(tier, b"k", b"v1") and fill(tier, b"cold", b"c")
    tier.clock.t += 1.9  # type: ignore[attr-defined]  (refreshes come due at 2.0-3.0 s: jittered)
    assert tier.get(0, b"k", "default") == b"v1" and tier.due == []
    tier.clock.t += 1.2  # type: ignore[attr-defined]
    assert tier.get(0, b"k", "default") == b"v1" and tier.due == [b"k"]  # still served, refresh due
    tier.due.clear()
    assert tier.get(0, b"k", "default") == b"v1" and tier.due == []  # asked for once only
    assert fill(tier, b"k", b"v2")  # the refresh replaces the entry and restarts its age
    tier.clock.t += 3.0  # type: ignore[attr-defined]
    assert tier.get(0, b"k", "default") == b"v2"
    assert tier.get(0, b"cold", "default") is None  # not hit in time: the bound still holds
    assert tier.used == sum(e.size for e in tier.entries.values()) and len(tier.policy) == 1
    # A refresh that finds the key gone drops the entry rather than keeping the old value.
    token = tier.begin_fill(0, b"k")
    assert token is not None
    assert not tier.complete_fill(0, b"k", token, None, -2, tier.clock(), "default")
    assert not tier.entries and tier.used == 0 and len(tier.policy) == 0


def test_host_store_keeps_the_reply_frame() -> None:
    store = HostStore()
    for value in (b"", b"v", b"a\r\nb", bytes(range(256)) * 40):
        handle = store.put(value)
        assert store.frame(handle) == b"$%d\r\n%s\r\n" % (len(value), value)
        assert store.get(handle) == value
    tier = make_tier()
    assert fill(tier, b"k", b"x\r\ny")
    assert tier.get_frame(0, b"k", "default") == b"$4\r\nx\r\ny\r\n"
    assert tier.get(0, b"k", "default") == b"x\r\ny"


def test_invalidation_covers_every_db_and_flush_db_only_one() -> None:
    tier = make_tier()
    for db in (0, 3):
        assert fill(tier, b"k", b"v", db=db)
        assert fill(tier, b"other", b"v", db=db)
    tier.invalidate([b"k"], source="tracking")
    assert sorted(tier.entries) == [(0, b"other"), (3, b"other")]
    assert tier.invalidations_tracking == 2
    tier.flush(db=3)
    assert sorted(tier.entries) == [(0, b"other")]


def test_large_entries_are_not_cached() -> None:
    tier = make_tier(capacity=10_000, max_entry_bytes=1000)
    assert not fill(tier, b"k", b"x" * 1000)
    assert fill(tier, b"k", b"x" * 100)


def test_prefetched_hits_counted_once() -> None:
    tier = make_tier()
    assert fill(tier, b"p", b"v", prefetched=True)
    assert fill(tier, b"d", b"v")
    for _ in range(3):
        tier.get(0, b"p", "default")
    assert (tier.prefetch_fills, tier.demand_fills, tier.prefetched_hits) == (1, 1, 1)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(POLICIES)),
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 3000), st.sampled_from("fgiF"), st.integers(0, 1)),
        min_size=1,
        max_size=150,
    ),
)
def test_byte_bound_holds_under_random_sizes(policy: str, ops: list[tuple[int, int, str, int]]) -> None:
    capacity = 20_000
    tier = make_tier(capacity=capacity, policy=policy, max_entry_bytes=capacity)
    for key_id, size, op, db in ops:
        key = b"key%d" % key_id
        if op == "f":
            if (db, key) not in tier.inflight:
                fill(tier, key, b"x" * size, db=db)
        elif op == "g":
            tier.get(db, key, "default")
        elif op == "i":
            tier.invalidate([key])
        else:
            tier.flush(db)
        assert tier.used <= capacity
        assert tier.used == sum(entry_size(k, tier.store.get(e.handle)) for (_, k), e in tier.entries.items())
        assert len(tier.policy) == len(tier.entries)
        # The request index holds exactly the entries, each under its db and GET request.
        indexed = {(db, request): e for db, index in tier.requests.items() for request, e in index.items()}
        assert indexed == {(d, get_request(k)): e for (d, k), e in tier.entries.items()}
        assert all(e.key == name and e.request == get_request(name[1]) for name, e in tier.entries.items())


@pytest.mark.parametrize("key_len,value_len", [(16, 64), (40, 1000)])
def test_byte_bound_counts_what_the_entries_really_take(
    policy_name: str, key_len: int, value_len: int
) -> None:
    """ENTRY_OVERHEAD against tracemalloc: the bytes counted per entry are within a fifth of what
    filling it allocates (a bound that undercounts lets the tier outgrow --hot-tier-bytes)."""
    n = 5000
    keys = [b"k%0*d" % (key_len - 1, i) for i in range(n)]
    tier = make_tier(capacity=1 << 40, policy=policy_name)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            fill(tier, key, b"v" * value_len)
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_entry = allocated / n + sys.getsizeof(keys[0])  # (the key's own bytes object came with the read)
    assert len(tier.entries) == n
    assert 0.8 < tier.used / n / per_entry < 1.2, (tier.used / n, per_entry)


def test_request_index_is_the_canonical_get() -> None:
    tier = make_tier()
    fill(tier, b"k\r\nx", b"v", db=3)
    (entry,) = tier.entries.values()
    assert tier.request_index(3) == {b"*2\r\n$3\r\nGET\r\n$4\r\nk\r\nx\r\n": entry}
    assert tier.request_index(0) == {}
    assert tier.request_index(3) is tier.request_index(3)  # connections keep a reference to it
    tier.flush()
    assert tier.request_index(3) == {}


# ---------------------------------------------------------------- value stores


def array_modules() -> list[object]:
    """NumPy always (CI); CuPy too where it and a GPU are present (the GPU machine's run)."""
    modules: list[object] = [np]
    try:
        modules.append(load_cupy())
    except ConfigError:
        pass
    return modules


@pytest.fixture(params=array_modules(), ids=lambda xp: xp.__name__)
def xp(request: pytest.FixtureRequest) -> object:
    return request.param


def test_device_store_allocator(xp: object) -> None:
    store = DeviceStore(4096, xp=xp)
    a = store.put(b"hello")
    b = store.put(b"x" * 100)
    assert store.get(a) == b"hello" and store.get(b) == b"x" * 100
    assert a[2] == 6 and b[2] == 7  # 64- and 128-byte classes
    store.free(a)
    c = store.put(b"again")  # reuses the freed 64-byte block
    assert c[0] == a[0] and store.get(c) == b"again"
    flat, offsets = store.gather([b, c])
    host, ends = to_host(flat), to_host(offsets)
    assert bytes(host.tobytes()) == b"x" * 100 + b"again" and list(ends) == [0, 100, 105]
    with pytest.raises(MemoryError):
        store.put(b"y" * 5000)


def free_blocks(store: DeviceStore) -> set[tuple[int, int]]:
    return {(offset, cls) for cls, offsets in store.free_lists.items() for offset in offsets}


@pytest.mark.parametrize("xp", array_modules(), ids=lambda xp: xp.__name__)
@settings(max_examples=200, deadline=None)
@given(
    st.integers(3000, 20_000),
    st.lists(st.tuples(st.booleans(), st.integers(0, 2500), st.integers(0, 10**6)), max_size=120),
)
def test_device_store_blocks_never_overlap_and_merge_back(
    xp: object, capacity: int, ops: list[tuple[bool, int, int]]
) -> None:
    """Random puts and frees: live blocks are disjoint and inside the buffer, every value reads back,
    ``used`` is the live blocks' sum, free and live blocks tile the buffer, and freeing everything
    merges the buddies back into exactly the blocks the store began with."""
    store = DeviceStore(capacity, xp=xp, max_value=2048)
    initial = free_blocks(store)
    live: dict[tuple[int, int, int], bytes] = {}
    for put, length, pick in ops:
        if put or not live:
            value = bytes([pick % 251]) * length
            try:
                live[store.put(value)] = value
            except MemoryError:
                # Only when no free block of its class or larger exists.
                need = DeviceStore.size_class(length)
                assert length > store.max_value or not any(
                    store.free_lists[c] for c in range(need, store.top_class + 1)
                )
        else:
            handle = sorted(live)[pick % len(live)]
            store.free(handle)
            del live[handle]
        spans = sorted((h[0], h[0] + (1 << h[2])) for h in live)
        spans += sorted((offset, offset + (1 << cls)) for offset, cls in free_blocks(store))
        spans.sort()
        assert spans[0][0] == 0 and spans[-1][1] == store.capacity  # tiles [0, capacity) exactly
        assert all(a_end == b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
        assert store.used == sum(1 << h[2] for h in live)
    assert all(store.get(h) == v for h, v in live.items())
    flat, offsets = store.gather(list(live))  # in the order asked, zero-length values included
    flat, offsets = to_host(flat), to_host(offsets)
    assert flat.tobytes() == b"".join(live.values())
    assert list(offsets) == [0, *itertools.accumulate(len(v) for v in live.values())]
    for handle in list(live):
        store.free(handle)
    assert free_blocks(store) == initial and store.used == 0


def test_tier_on_device_store_logic(xp: object) -> None:
    tier = HotTier(100_000, store=DeviceStore(100_000, xp=xp), clock=Clock())
    tier.active = True
    for i in range(50):
        fill(tier, b"k%d" % i, bytes([i]) * (i * 10))
    assert all(tier.get(0, b"k%d" % i, "default") == bytes([i]) * (i * 10) for i in range(50))
    tier.flush()
    assert tier.store.used == 0  # type: ignore[attr-defined]


def test_device_tier_keeps_caching_when_value_sizes_shift(xp: object) -> None:
    """Filled with 1000-byte values (1 KiB blocks), then with 3000-byte ones (4 KiB blocks): every
    fill of the second kind is cached, because evictions free blocks that merge into larger ones
    and the tier evicts until the device store has a block. (With per-class free lists the buffer
    stayed carved into 1 KiB blocks, and 89 of 2,000 such fills were cached.)"""
    capacity = 1 << 20
    tier = HotTier(capacity, store=DeviceStore(capacity, xp=xp), clock=Clock())
    tier.active = True
    for i in range(3000):
        assert fill(tier, b"small%d" % i, b"s" * 1000)
    cached = sum(fill(tier, b"big%d" % i, bytes([i % 256]) * 3000) for i in range(2000))
    assert cached == 2000
    # Every 1 KiB block merged back: the buffer ends as whole 4 KiB blocks, each holding a value
    # (without merging, about 80 of them would remain, the space the small values never used).
    assert len(tier.entries) == capacity // 4096
    assert all(tier.get(0, k, "default") == bytes([int(k[3:]) % 256]) * 3000 for (_, k) in tier.entries)
    assert tier.used <= capacity and tier.store.used <= capacity  # type: ignore[attr-defined]


def test_device_tier_does_not_evict_for_a_value_no_block_holds() -> None:
    tier = HotTier(1 << 16, store=DeviceStore(1 << 16, xp=np, max_value=1024), clock=Clock())
    tier.active = True
    assert fill(tier, b"a", b"x" * 100)
    assert not fill(tier, b"b", b"y" * 2000)  # longer than the largest block: not cached...
    assert tier.get(0, b"a", "default") == b"x" * 100  # ...and nothing was evicted for it


def test_gpu_store_refuses_clearly_without_cupy() -> None:
    try:
        load_cupy()
    except ConfigError as exc:
        assert "--hot-tier gpu" in str(exc) and "\n" not in str(exc)
    else:
        pytest.skip("CuPy and a GPU are present: the refusal path cannot be shown here")
    assert isinstance(make_store("cpu", 10), HostStore)


def test_fill_admission_backs_off_when_thrashing_and_recovers() -> None:
    tier = make_tier(capacity=30 * (ENTRY_OVERHEAD + 10))  # room for 30 entries
    for i in range(3000):  # every key once: evicted unused, fills are pure cost
        fill(tier, b"k%06d" % i, b"v" * 4)
    assert tier.admit_p < 0.1
    low = tier.admit_p
    for i in range(3000):  # a small hot set: every entry earns many hits before it goes
        key = b"h%02d" % (i % 40)
        if tier.get(0, key, "default") is None:
            fill(tier, key, b"v" * 4)
        for _ in range(8):
            tier.get(0, key, "default")
    assert tier.admit_p > low


def test_partitions_hold_each_arm_to_its_share_and_never_evict_anothers() -> None:
    """An A/B test's arms split the tier: filling one arm far past its share evicts only its own
    entries, and the other arm's stay."""
    part_of = {b"a": 0, b"b": 1}
    tier = HotTier(
        100_000, partitions=[0.25, 0.75], partition_of=lambda key: part_of[key[:1]], max_staleness=3600.0
    )
    tier.active = True

    def fill(key: bytes) -> None:
        token = tier.begin_fill(0, key)
        assert token is not None and tier.complete_fill(
            0, key, token, b"v" * 100, -1, tier.clock(), "default"
        )

    for i in range(50):
        fill(b"b%d" % i)
    held_b = {k for k in tier.entries if k[1][:1] == b"b"}
    for i in range(2_000):  # far more than arm a's 25,000 bytes hold
        fill(b"a%d" % i)
    assert {k for k in tier.entries if k[1][:1] == b"b"} == held_b  # arm b lost nothing
    assert tier.part_used[0] <= tier.part_capacity[0] == 25_000 and tier.part_used[1] <= 75_000
    assert tier.evictions > 0 and tier.used == sum(tier.part_used)
    assert tier.used == sum(e.size for e in tier.entries.values())


def test_a_write_in_another_process_s_tier_stops_this_one_serving_the_key() -> None:
    """Shared write epochs (HotTier.share_epochs, as --workers maps them): a local write in one
    tier bumps the key's bucket, and the other tier no longer serves an entry it read before, nor
    inserts as fresh a read that began before the write."""
    shared = memoryview(bytearray(8 * 65)).cast("Q")
    mine, theirs = make_tier(), make_tier()
    for tier in (mine, theirs):
        tier.active = True
        tier.share_epochs(shared)
    token = mine.begin_fill(0, b"k")
    assert token is not None and mine.complete_fill(0, b"k", token, b"old", -1, 0.0, "default")
    assert mine.get(0, b"k", "default") == b"old"
    theirs.invalidate([b"k"])  # (a write through the other process, acknowledged after this)
    assert mine.get(0, b"k", "default") is None
    assert mine.get(0, b"other", "default") is None  # (nothing else is served either way)
    # A read that began before the write and landed after it is not served as fresh.
    token = mine.begin_fill(0, b"k")
    theirs.invalidate([b"k"])
    assert token is not None and mine.complete_fill(0, b"k", token, b"old", -1, 0.0, "default")
    assert mine.get(0, b"k", "default") is None
    # One that began after it is.
    token = mine.begin_fill(0, b"k")
    assert token is not None and mine.complete_fill(0, b"k", token, b"new", -1, 0.0, "default")
    assert mine.get(0, b"k", "default") == b"new"
    # A FLUSHALL through the other process: nothing read before it is served.
    theirs.flush(local=True)
    assert mine.get(0, b"k", "default") is None
    token = mine.begin_fill(0, b"k")
    assert token is not None and mine.complete_fill(0, b"k", token, b"new", -1, 0.0, "default")
    assert mine.get(0, b"k", "default") == b"new"
    theirs.flush()  # (not local: a tracking flush the other process heard; nothing shared moves)
    assert mine.get(0, b"k", "default") == b"new"
    for end in ("abandon", "invalidate", "flush"):  # (a read that ends without an entry leaves nothing)
        token = mine.begin_fill(0, b"gone")
        assert token is not None
        if end == "abandon":
            mine.abandon_fill(0, b"gone", token)
        elif end == "invalidate":
            mine.invalidate([b"gone"], "tracking")
        else:
            mine.flush()
        assert not mine.fill_epochs, end
    assert theirs.epochs is mine.epochs and make_tier().epochs is None  # (no sharing: no cost)
