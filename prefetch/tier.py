"""The hot tier: a byte-bounded map of (db, key) -> value that the proxy serves GETs from.

Coherence rules live here, I/O does not (the proxy's connections and the filler call in):

* A value enters only through a *fill*: ``begin_fill`` leaves a placeholder before the upstream
  read is sent, ``complete_fill`` inserts only if the placeholder survived. Any invalidation of the
  key, or a flush, in between removes it, so a value read while an invalidation was in flight is
  never cached.
* An entry is never served past its Redis expiry (the PTTL read with the value, counted from
  before the read was sent) nor older than ``max_staleness`` seconds. An entry hit after half to three
  quarters of that age (drawn per entry) is read again in the background (refresh-ahead) while it is still served, so a hot key
  does not fall out of the tier, and into the miss path, every ``max_staleness`` seconds. A
  refresh that reads back the same value renews the entry in place: its age restarts, its place in
  the policy's order and its hit count stay (a refresh is neither a read nor an insert).
* Entries carry the ACL user of the connection that filled them; only that user is served them.
* While ``active`` is false (the invalidation channel is down) nothing is served or filled.

Invalidations name keys without a database (as Redis's tracking messages do), so a key is dropped
from every database: conservative, and it covers MOVE, COPY ... DB and SWAPDB.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, cast

from common.histogram import LatencyHistogram
from prefetch.policies import EvictionPolicy, make_policy
from prefetch.store import HostStore, ValueStore

# Per-entry memory beyond the key (counted twice: in the tuple key and in the GET request of the
# request index) and the value: the Entry, both index slots, the policy's bookkeeping, the tuple
# and the bytes objects' headers, the reply frame's included. Measured with tracemalloc on CPython
# 3.11 at 574-583 bytes for LRU (StampedLRU's heap item and seq) and 532-553 for S3-FIFO
# (tests/unit/test_tier.py holds it within a fifth).
ENTRY_OVERHEAD = 560
# Hits an entry must average before eviction for demand fills to pay for themselves: a fill is an
# extra upstream MGET/PTTL and about three forwarded GETs' worth of proxy work (bench/HISTORY.md).
FILL_PAYBACK = 3.0
# An entry hit after a share of its staleness bound drawn in [REFRESH_AT, REFRESH_AT + REFRESH_JITTER)
# is read again in the background. Each hot key costs one upstream read per that many seconds, so
# later is cheaper; the jitter spreads the keys filled together (a warm-up, a flush) so that their
# refreshes do not all hit Redis in one wave; the margin left (at least a quarter of the bound,
# 2.5 s at the default) is far longer than a refresh takes.
REFRESH_AT = 0.5
REFRESH_JITTER = 0.25

Key = tuple[int, bytes]


def get_request(key: bytes) -> bytes:
    """The canonical RESP encoding of ``GET key``, as clients send it: the request index's key."""
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


def entry_size(key: bytes, value: bytes) -> int:
    """The bytes an entry counts against the tier's bound."""
    return 2 * len(key) + len(value) + ENTRY_OVERHEAD


class Entry:
    __slots__ = (
        "key",
        "request",
        "handle",
        "size",
        "expires",
        "filled",
        "until",
        "refresh_at",
        "user",
        "prefetched",
        "hits",
        "last",
        "part",
        "bucket",
        "epoch",
        "flushes",
    )

    def __init__(
        self,
        key: Key,
        request: bytes,
        handle: Any,
        size: int,
        expires: float,
        filled: float,
        user: str,
        prefetched: bool,
        refresh_at: float = math.inf,
        max_staleness: float = math.inf,
        part: int = 0,
    ) -> None:
        self.key = key  # (db, key), the same tuple as the entries' dict key
        self.request = request  # get_request(key): its slot in the db's request index
        self.handle = handle
        self.size = size
        self.renew(expires, filled, max_staleness, refresh_at)
        self.user = user
        self.prefetched = prefetched
        self.hits = 0  # times served
        self.last = filled  # last access, for the eviction policy (StampedLRU reads it)
        self.part = part  # the tier partition (an A/B arm's share) it counts against
        # With write epochs shared between processes (HotTier.share_epochs): the key's bucket, and
        # its epoch when the read that filled the entry began.
        self.bucket = 0
        self.epoch = 0
        self.flushes = 0  # the shared flush epoch then

    def renew(self, expires: float, filled: float, max_staleness: float, refresh_at: float) -> None:
        """Set the deadlines of a value read at ``filled`` (a fill, or a refresh that found it
        unchanged)."""
        self.expires = expires
        self.filled = filled
        # Served while the clock is below this: the Redis expiry or the staleness bound, whichever
        # comes first (one comparison on the hit path).
        self.until = min(expires, filled + max_staleness)
        self.refresh_at = refresh_at  # a hit after this asks for a background re-read


class HotTier:
    def __init__(
        self,
        capacity_bytes: int,
        max_entry_bytes: int = 1024 * 1024,
        max_staleness: float = 10.0,
        policy: str = "lru",
        store: ValueStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        partitions: Sequence[float] | None = None,
        partition_of: Callable[[bytes], int] | None = None,
    ) -> None:
        """``partitions``: shares of the capacity, one per partition, and ``partition_of`` the
        partition of a key (an A/B test's arms: each arm's entries are held to its share, and
        evicting for one never takes another's)."""
        if capacity_bytes <= 0:
            raise ValueError("hot tier capacity must be positive")
        shares = list(partitions) if partitions else [1.0]
        if len(shares) > 1 and partition_of is None:
            raise ValueError("partitions need partition_of")
        self.capacity = capacity_bytes
        self.max_entry_bytes = max_entry_bytes
        self.max_staleness = max_staleness
        self.partition_of = partition_of if len(shares) > 1 else None
        self.part_capacity = [max(1, int(capacity_bytes * share / sum(shares))) for share in shares]
        self.part_used = [0] * len(shares)
        self.part_entries = [0] * len(shares)
        self.policies: list[EvictionPolicy] = [
            make_policy(policy, cap, stamp=self._last_access) for cap in self.part_capacity
        ]
        self.policy = self.policies[0]
        # What a hit calls on the policy, if anything: every hit stamps ``Entry.last``, which
        # StampedLRU (the LRU here) reads at eviction instead of being called per hit.
        self.touch: Callable[[Key], None] | None = None
        if not self.policy.reads_stamps:
            self.touch = self.policy.touch if len(shares) == 1 else self._touch_partitioned
        self.store: ValueStore = store or HostStore()
        self.host_values = isinstance(self.store, HostStore)  # the handle is the reply frame itself
        self.clock = clock
        self.entries: dict[Key, Entry] = {}
        # The same entries by db, then by the bytes of a canonical ``GET key`` request: the hit
        # path finds an entry with one lookup of the client's read, without parsing it.
        self.requests: dict[int, dict[bytes, Entry]] = {}
        self.dbs: set[int] = set()  # databases with entries or fills, for key-only invalidation
        self.inflight: dict[Key, int] = {}  # placeholders: key -> fill token
        # Write epochs shared with other processes serving the same Redis (predis serve --workers):
        # None, or one counter per bucket of keys that every local write bumps (share_epochs).
        self.epochs: Any = None
        self.epoch_mask = 0
        self.flush_slot = 0
        self.fill_epochs: dict[Key, tuple[int, int]] = {}
        self.fills_begun = 0  # also the last fill token handed out
        self.used = 0
        self.active = False
        # Fill admission: the share of demand misses that are filled. A fill costs an upstream read
        # and more proxy work than forwarding one GET, so it must earn a few hits before it is
        # evicted. The share halves while evicted entries averaged fewer than FILL_PAYBACK hits
        # (the tier is thrashing) and doubles back while they average twice that.
        self.rng = rng or random.Random(0)
        self.admit_p = 1.0
        self._window_evictions = 0
        self._window_hits = 0
        # Statistics.
        self.hits = 0
        self.misses = 0
        self.demand_fills = 0
        self.prefetch_fills = 0
        self.prefetched_hits = 0
        self.part_prefetch_fills = [0] * len(shares)  # per partition (arm): its precision's parts
        self.part_prefetched_hits = [0] * len(shares)
        self.fills_dropped = 0
        self.bypassed = 0  # GETs in reads too long to serve from the tier (hot_tier_max_batch)
        self.evictions = 0
        self.invalidations_local = 0
        self.invalidations_tracking = 0
        self.invalidations_flush = 0
        self.refreshes = 0  # background re-reads of entries hit after REFRESH_AT of their staleness bound
        self.due: list[bytes] = []  # keys whose refresh get_frame found due (the caller requests it)
        self.served_latency = LatencyHistogram()

    # ------------------------------------------------------------------ reads

    def share_epochs(self, epochs: Any) -> None:
        """Write epochs shared with the other workers (a writable memoryview of unsigned 64-bit
        counters, a power of two of them): a write through any worker bumps its key's bucket
        before the client hears it was done, and an entry filled before that bump is not served.
        Redis's tracking tells every worker too, but a worker may read that message after a
        client, told its write was done, asked it for the key (a stale read, under load). The
        last counter is bumped by a local FLUSHALL or FLUSHDB, and any entry read before is not
        served. ``epochs`` holds 2**k + 1 counters."""
        self.epochs = epochs
        self.flush_slot = len(epochs) - 1
        self.epoch_mask = self.flush_slot - 1

    def written_elsewhere(self, entry: Entry) -> bool:
        """Whether a write through another worker may have changed ``entry``'s key since it was
        read (its bucket's epoch moved); always False without shared epochs."""
        epochs = self.epochs
        return epochs is not None and (
            epochs[entry.bucket] != entry.epoch or epochs[self.flush_slot] != entry.flushes
        )

    def _bucket(self, key: bytes) -> int:
        return zlib.crc32(key) & self.epoch_mask

    def get_frame(self, db: int, key: bytes, user: str) -> bytes | None:
        """The value to serve as a RESP bulk string, or None (a miss). Counts the hit or miss."""
        entry = self.entries.get((db, key))
        if entry is None or not self.active or entry.user != user:
            self.misses += 1
            return None
        now = self.clock()
        if now >= entry.until or self.written_elsewhere(entry):
            self._drop((db, key), entry)
            self.misses += 1
            return None
        if self.hit(entry, now):
            self.due.append(key)
        return entry.handle if self.host_values else self.store.frame(entry.handle)

    def frames_of_all(self, db: int, keys: list[bytes], user: str) -> tuple[list[bytes] | None, list[bytes]]:
        """An MGET's values, served whole or not at all: (the frames, []) when every key can be
        served now, each counted as a hit (keys due for a refresh go to ``due``); otherwise (None,
        the keys that cannot: not held, another user's, or past their deadline), with nothing
        counted or touched. One lookup per key."""
        entries = self.entries
        found = [entries.get((db, key)) for key in keys]
        now = self.clock()
        unservable = [
            key
            for key, entry in zip(keys, found, strict=True)
            if entry is None
            or entry.user != user
            or now >= entry.until
            or not self.active
            or self.written_elsewhere(entry)
        ]
        if unservable:
            return None, unservable
        held = cast(list[Entry], found)
        for key, entry in zip(keys, held, strict=True):
            if self.hit(entry, now):
                self.due.append(key)
        if self.host_values:
            return [entry.handle for entry in held], []
        return [self.store.frame(entry.handle) for entry in held], []

    def hit(self, entry: Entry, now: float) -> bool:
        """Count a hit on ``entry``, served at ``now``, whichever path served it: the tier's
        counters and the entry's fields change here only. True if the entry is due for a
        background re-read (refresh-ahead, asked for once), which the caller requests."""
        self.hits += 1
        entry.hits += 1
        if entry.prefetched:
            self.prefetched_hits += 1
            self.part_prefetched_hits[entry.part] += 1
            entry.prefetched = False  # count a prefetch's first hit only
        entry.last = now  # (what the LRU reads; other policies are told)
        if self.touch is not None:
            self.touch(entry.key)
        if now >= entry.refresh_at:
            entry.refresh_at = math.inf
            return True
        return False

    def get(self, db: int, key: bytes, user: str) -> bytes | None:
        """``get_frame``, as the value itself."""
        frame = self.get_frame(db, key, user)
        return None if frame is None else frame[frame.index(b"\n") + 1 : -2]

    def _last_access(self, key: Hashable) -> float:
        return self.entries[cast(Key, key)].last

    def _touch_partitioned(self, key: Key) -> None:
        self.policies[self.entries[key].part].touch(key)

    def request_index(self, db: int) -> dict[bytes, Entry]:
        """Database ``db``'s request index: a dict that lives as long as the tier (connections
        keep a reference to their db's), kept in step with ``entries``."""
        index = self.requests.get(db)
        if index is None:
            index = self.requests[db] = {}
        return index

    def __contains__(self, item: Key) -> bool:
        return item in self.entries

    # ------------------------------------------------------------------ fills

    def admit(self) -> bool:
        """Whether to fill a demand miss now (see ``admit_p``)."""
        return self.admit_p >= 1.0 or self.rng.random() < self.admit_p

    def begin_fill(self, db: int, key: bytes) -> int | None:
        """Leave a placeholder before reading the key upstream; None if a fill is already in flight."""
        if not self.active or (db, key) in self.inflight:
            return None
        self.fills_begun += 1
        self.inflight[(db, key)] = self.fills_begun
        if self.epochs is not None:
            self.fill_epochs[(db, key)] = (self.epochs[self._bucket(key)], self.epochs[self.flush_slot])
        self.dbs.add(db)
        return self.fills_begun

    def complete_fill(
        self,
        db: int,
        key: bytes,
        token: int,
        value: bytes | None,
        pttl_ms: int,
        sent_at: float,
        user: str,
        prefetched: bool = False,
    ) -> bool:
        """Insert a value read upstream, if no invalidation touched the key since ``begin_fill``.

        ``sent_at`` is when the read left the proxy (the tier's clock): an expiry counted from then
        is never later than Redis's own.
        """
        if self.inflight.get((db, key)) != token:
            self.fills_dropped += 1
            return False
        del self.inflight[(db, key)]
        began, flushes = self.fill_epochs.pop((db, key), (0, 0))
        old = self.entries.get((db, key))
        if value is None or pttl_ms == -2 or not self.active:
            if old is not None:  # a refresh found the key gone
                self._drop((db, key), old)
            return False  # no such key (or it expired between the two reads)
        expires = math.inf if pttl_ms < 0 else sent_at + pttl_ms / 1000.0
        if old is not None:  # a refresh (or a fill racing one)
            if (
                self.host_values
                and not prefetched
                and old.user == user
                and old.handle == self.store.put(value)  # (the host store's put only encodes)
            ):
                # The value is unchanged: the entry is renewed where it is, keeping its place in
                # the policy's order (a refresh is not a read) and its hit count.
                filled = self.clock()
                old.renew(expires, filled, self.max_staleness, self._refresh_at(filled))
                old.epoch, old.flushes = began, flushes
                self.demand_fills += 1
                return True
            self._drop((db, key), old)  # the new read replaces it
        size = entry_size(key, value)
        part = self.partition_of(key) if self.partition_of is not None else 0
        room = self.part_capacity[part]
        if size > self.max_entry_bytes or size > room or len(value) > self.store.max_value:
            return False
        used = self.part_used
        while used[part] + size > room and used[part]:
            self._evict_one(part)
        while True:
            try:
                handle = self.store.put(value)
                break
            except MemoryError:
                # The device store has no free block of this value's size (power-of-two rounding,
                # or free memory in pieces): evict in policy order until freeing makes one (only
                # this partition's entries: another arm's are never evicted for this one).
                if not used[part]:
                    return False
                self._evict_one(part)
        filled = self.clock()
        name = (db, key)
        request = get_request(key)
        self.entries[name] = entry = Entry(
            name,
            request,
            handle,
            size,
            expires,
            filled,
            user,
            prefetched,
            self._refresh_at(filled),
            self.max_staleness,
            part,
        )
        if self.epochs is not None:
            entry.bucket, entry.epoch, entry.flushes = self._bucket(key), began, flushes
        self.request_index(db)[request] = entry
        self.used += size
        used[part] += size
        self.part_entries[part] += 1
        self.policies[part].insert(name, size)
        if prefetched:
            self.prefetch_fills += 1
            self.part_prefetch_fills[part] += 1
        else:
            self.demand_fills += 1
        return True

    def _refresh_at(self, filled: float) -> float:
        """When an entry read at ``filled`` comes due for a refresh (see REFRESH_AT)."""
        return filled + self.max_staleness * (REFRESH_AT + REFRESH_JITTER * self.rng.random())

    def abandon_fill(self, db: int, key: bytes, token: int) -> None:
        if self.inflight.get((db, key)) == token:
            del self.inflight[(db, key)]
            self.fill_epochs.pop((db, key), None)

    # ------------------------------------------------------------------ invalidation

    def invalidate(self, keys: Iterable[bytes], source: str = "local") -> None:
        """Drop these keys from every database, and any fill of them in flight; a write through
        this process (``local``) also bumps the keys' shared epochs (share_epochs)."""
        epochs = self.epochs
        if epochs is not None and source == "local":
            keys = list(keys)
            for key in keys:
                epochs[self._bucket(key)] += 1
        if not self.entries and not self.inflight:
            return
        count = 0
        for key in keys:
            for db in self.dbs:
                if self.inflight.pop((db, key), None) is not None:
                    self.fill_epochs.pop((db, key), None)
                entry = self.entries.get((db, key))
                if entry is not None:
                    self._drop((db, key), entry)
                    count += 1
        if source == "tracking":
            self.invalidations_tracking += count
        else:
            self.invalidations_local += count

    def invalidate_if_filled(self, keys: Iterable[bytes], fills_begun: int) -> None:
        """``invalidate``, needed again only if a fill began since ``fills_begun`` was read: a
        write's keys are dropped when it is forwarded, and only a fill begun after that can have
        put back a value read before the write was applied."""
        if self.fills_begun != fills_begun:
            self.invalidate(keys)

    def flush(self, db: int | None = None, local: bool = False) -> None:
        """Drop everything (or one database), fills in flight included; ``local``: a FLUSHALL or
        FLUSHDB through this process, which bumps the shared flush epoch (share_epochs)."""
        if local and self.epochs is not None:
            self.epochs[self.flush_slot] += 1
        if db is None:
            doomed = list(self.entries.items())
            self.inflight.clear()
            self.fill_epochs.clear()
        else:
            doomed = [(k, e) for k, e in self.entries.items() if k[0] == db]
            for k in [k for k in self.inflight if k[0] == db]:
                del self.inflight[k]
                self.fill_epochs.pop(k, None)
        for k, e in doomed:
            self._drop(k, e)
        self.invalidations_flush += 1

    def _evict_one(self, part: int = 0) -> None:
        victim = cast(Key, self.policies[part].victim())
        self._drop(victim, self.entries[victim], evicted=True)

    def _drop(self, key: Key, entry: Entry, evicted: bool = False) -> None:
        del self.entries[key]
        del self.requests[key[0]][entry.request]
        self.used -= entry.size
        self.part_used[entry.part] -= entry.size
        self.part_entries[entry.part] -= 1
        self.store.free(entry.handle)
        if evicted:
            self.evictions += 1
            self._window_evictions += 1
            self._window_hits += entry.hits
            if self._window_evictions >= 256:
                payback = self._window_hits / self._window_evictions
                if payback < FILL_PAYBACK:
                    self.admit_p = max(self.admit_p / 2, 1 / 1024)
                elif payback > 2 * FILL_PAYBACK:
                    self.admit_p = min(self.admit_p * 2, 1.0)
                self._window_evictions = self._window_hits = 0
        else:
            self.policies[entry.part].remove(key)

    # ------------------------------------------------------------------ figures

    def snapshot(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        lat = self.served_latency
        return {
            "active": int(self.active),
            "policy": self.policy.name,
            "store": self.store.name,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / lookups, 4) if lookups else 0.0,
            "demand_fills": self.demand_fills,
            "prefetch_fills": self.prefetch_fills,
            "prefetched_hits": self.prefetched_hits,
            "fills_dropped": self.fills_dropped,
            "refreshes": self.refreshes,
            "bypassed": self.bypassed,
            "evictions": self.evictions,
            "invalidations_local": self.invalidations_local,
            "invalidations_tracking": self.invalidations_tracking,
            "invalidations_flush": self.invalidations_flush,
            "bytes_used": self.used,
            "bytes_capacity": self.capacity,
            "partitions": len(self.policies),
            "entries": len(self.entries),
            "fills_in_flight": len(self.inflight),
            "fill_admission": round(self.admit_p, 4),
            "served_latency_p50_us": lat.percentile(50),
            "served_latency_p99_us": lat.percentile(99),
        }
