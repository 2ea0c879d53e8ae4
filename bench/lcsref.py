"""libCacheSim's LRU with its OBL and Mithril prefetchers, as its C code runs them, in Python: the
reference our own OBL and Mithril are checked against where libCacheSim's ``cachesim`` binary is not
installed (its Python binding has no prefetchers).

Written from the rules of libCacheSim's ``cache/prefetch/OBL.c`` and ``Mithril.c`` and its
``cache_get_base``/``cache_evict_base``, including the details that decide the figures:

* Sizes. Objects are 4 KiB (``--object-size``) and the cache holds floor(share x unique keys)
  of them, in bytes. OBL inserts its prefetched block with its own ``block-size`` parameter (512
  by default), not the size of the requested block, and a hit never updates a size, so with the
  defaults a prefetched block takes an eighth of a demand-filled one's space. Mithril takes the
  size the block was last requested with.
* Mithril: misses recorded in a ring of 2% of the cache's bytes / 14 rows, the mining table mined
  when it holds 2,560 keys, timestamps kept in 15 bits (they wrap at 32,768), the 4th and 8th
  timestamp read back as the count of their word (``GET_NTH_TS``'s indexing); a key associated
  with the first key after it whose timestamp count is within ``confidence`` and with any whose
  timestamps differ by exactly 1; a FIFO prefetch list of 2 per key, in a table of 10% of the
  cache's bytes in shards of 2,000 rows (when full, only the first shard's rows are reused); an
  unread prefetched block evicted goes back to the MRU end once (``cycle-time=2``).

``python -m bench.lcsref TRACE [--format F] [--cache 1%,5%,10%]`` prints, per cache size, the
hit ratio of libCacheSim's OBL (with its default block size, and with the objects' size), of its
Mithril, and of ours (``predis sim`` with every access a read, ``--budget`` prefetches per request;
OBL with libCacheSim's k=4 and with our default); the figures for P6 in
``../shared/traces/README.md`` are the references' check.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MASK15 = (1 << 15) - 1
SHARD = 2000  # PREFETCH_TABLE_SHARD_SIZE


class LRUBytes:
    """libCacheSim's LRU over bytes: insert at the MRU end, evict from the LRU end, a find without
    update does not move an entry. ``on_evict(key, size)`` runs after an entry is removed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.entries: OrderedDict[int, int] = OrderedDict()
        self.on_evict: Callable[[int, int], None] | None = None

    def make_room(self, size: int) -> None:
        entries = self.entries
        while self.used + size > self.capacity:
            key, held = entries.popitem(last=False)
            self.used -= held
            if self.on_evict is not None:
                self.on_evict(key, held)

    def insert(self, key: int, size: int) -> None:
        self.make_room(size)
        self.entries[key] = size
        self.used += size


def obl(keys: Sequence[int], capacity: int, object_size: int, block_size: int, k: int = 4) -> int:
    """Hits of LRU+OBL (``sequential-confidence-k`` = k)."""
    cache = LRUBytes(capacity)
    entries = cache.entries
    prev = [-1] * k
    idx = 0
    hits = 0
    for key in keys:
        seq = True
        for i in range(k):
            if prev[(idx + 1 + i) % k] != key - k + i:
                seq = False
                break
        idx = (idx + 1) % k
        prev[idx] = key
        if key in entries:
            hits += 1
            entries.move_to_end(key)
        else:
            cache.insert(key, object_size)
        if seq and key + 1 not in entries:
            cache.insert(key + 1, block_size)
    return hits


def _ts_at(word: int, n: int) -> int:
    """GET_NTH_TS's read of the n-th timestamp (1-4) of one word: position n % 4, so n = 4 reads
    the word's count bits."""
    return (word >> (15 * (4 - n % 4))) & MASK15


def _nth(row: list[int], n: int) -> int:
    return _ts_at(row[1 + n // 5], n)


def _count(word: int) -> int:
    return word >> 60


def _add_ts(word: int, ts: int) -> int:
    n = _count(word) + 1
    shift = 15 * (4 - n)
    word = (word & ~(MASK15 << shift)) | ((ts & MASK15) << shift)
    return (word & ((1 << 60) - 1)) | (n << 60)


def _append_ts(row: list[int], ts: int) -> int:
    """Add ``ts`` to the first of the row's words with room (four timestamps a word), as both of
    libCacheSim's tables do; returns the count it found before (of the full words and that one)."""
    length = 0
    for i in range(1, len(row)):
        length += _count(row[i])
        if _count(row[i]) < 4:
            row[i] = _add_ts(row[i], ts)
            break
    return length


def _total(row: list[int]) -> int:
    total = 0
    for word in row[1:]:
        c = _count(word)
        if c == 0:
            return total
        total += c
    return total


class MithrilRef:
    """libCacheSim's Mithril with its default parameters (lookahead 20, min support 2, max support
    8, confidence 1, prefetch list 2, record on miss, mining threshold 5,120, cycle time 2, no
    sequential part), for a cache of ``cache_bytes``."""

    def __init__(
        self, cache: LRUBytes, cache_bytes: int, mining_threshold: int = 5120, cycle_time: int = 2
    ) -> None:
        self.cache = cache
        self.lookahead, self.min_support, self.max_support, self.confidence = 20, 2, 8, 1
        self.pf = 2
        self.cycle = cycle_time
        self.mtable_size = mining_threshold // self.min_support
        self.rrow_len = math.ceil(self.min_support / 4) + 1
        self.mrow_len = math.ceil(self.max_support / 4) + 1
        self.max_meta = int(cache_bytes * 0.1)
        max_shards = int(self.max_meta / (SHARD * self.pf))
        assert max_shards > 0
        self.meta = (
            (self.max_support * 2 + 8 + 4) * self.mtable_size + max_shards * 8 + SHARD * (self.pf * 8 + 8 + 4)
        )
        self.n_rrows = int(cache_bytes * 0.02 / (math.ceil(self.min_support / 2) * 2 + 8 + 4))
        self.meta += (math.ceil(self.min_support / 4 + 1) * 8 + 4) * self.n_rrows
        self.rtable: list[list[int]] = [[0] * self.rrow_len for _ in range(self.n_rrows)]
        self.rcur = 1
        self.mining: list[list[int]] = []
        self.n_avail = 0
        self.where: dict[int, int] = {}  # key -> row in the recording table (> 0) or -(mining row + 1)
        self.ptable: dict[int, list[int]] = {}  # key -> [key, target 1, target 2] (0: empty)
        self.rows: dict[int, int] = {}  # table row -> its key
        self.pcur = 1
        self.full = False
        self.prefetched: dict[int, int] = {}  # key -> cycles it has had
        self.ts = 0
        cache.on_evict = self.evicted

    def find(self, key: int, hit: bool) -> None:
        self.prefetched.pop(key, None)
        if not hit:
            self.record(key)

    def evicted(self, key: int, size: int) -> None:
        kind = self.prefetched.get(key, 0)
        if kind and kind < self.cycle:
            self.prefetched[key] = kind + 1
            self.cache.insert(key, size)
        else:
            self.prefetched.pop(key, None)

    def prefetch(self, key: int, size: int) -> None:
        row = self.ptable.get(key)
        if row is not None:
            entries = self.cache.entries
            for i in range(1, self.pf + 1):
                cand = row[i]
                if cand == 0:
                    break
                if cand in entries:
                    continue
                self.cache.insert(cand, size)
                self.prefetched[cand] = 1
        self.ts += 1

    def record(self, key: int) -> None:
        where, ts = self.where, self.ts
        index = where.get(key, 0)
        if index == 0:
            row = self.rtable[self.rcur]
            row[0] = key
            where[key] = self.rcur
            row[1] = _add_ts(row[1], ts)
            self.rcur += 1
            if self.rcur >= self.n_rrows:
                self.rcur = 1
            row = self.rtable[self.rcur]
            if row[0] != 0:
                where.pop(row[0], None)
                for i in range(self.rrow_len):
                    row[i] = 0
        elif index < 0:
            row = self.mining[-index - 1]
            if _append_ts(row, ts) == self.max_support:
                del where[row[0]]
                last = self.mining.pop()
                if -index - 1 != len(self.mining):
                    self.mining[-index - 1] = last
                    where[last[0]] = index
                self.n_avail -= 1
        else:
            row = self.rtable[index]
            if _append_ts(row, ts) == self.min_support - 1:
                self.mining.append(row[:] + [0] * (self.mrow_len - self.rrow_len))
                self.n_avail += 1
                last = self.rtable[self.rcur - 1]
                moved = index != self.rcur - 1 and self.rcur >= 2
                if moved:
                    row[:] = last
                if self.rcur >= 2:
                    for i in range(self.rrow_len):
                        last[i] = 0
                else:
                    for i in range(self.rrow_len):
                        row[i] = 0
                where[key] = -len(self.mining)
                if moved:
                    where[row[0]] = index
                if self.rcur >= 2:
                    self.rcur -= 1
        if self.n_avail >= self.mtable_size:
            self.mine()
            self.n_avail = 0

    def mine(self) -> None:
        for row in self.mining:
            self.where.pop(row[0], None)
        rows = sorted(self.mining, key=lambda r: _nth(r, 1))  # (a stable sort, as g_array_sort)
        la, conf = self.lookahead, self.confidence
        n = len(rows)
        for i in range(n - 1):
            a = rows[i]
            na = _total(a)
            first = True
            a1 = _nth(a, 1)
            for j in range(i + 1, n):
                b = rows[j]
                if _nth(b, 1) - a1 > la:
                    break
                nb = _total(b)
                if abs(na - nb) > conf:
                    continue
                shorter = min(na, nb)
                assoc = False
                if first:
                    assoc, first = True, False
                if shorter == 1 and abs(a1 - _nth(b, 1)) == 1:
                    assoc = True
                error = 0
                for k in range(1, shorter):
                    d = abs(_nth(a, k) - _nth(b, k))
                    if d > la:
                        error += 1
                        if error > conf:
                            assoc = False
                            break
                    if d == 1:
                        assoc = True
                if assoc:
                    self.associate(a[0], b[0])
        self.mining = []

    def associate(self, a: int, b: int) -> None:
        row = self.ptable.get(a)
        if row is not None:
            insert = True
            i = 1
            while i < self.pf + 1:
                if row[i] == 0:
                    break
                if row[i] == b:
                    insert = False
                i += 1
            if insert:
                if i == self.pf + 1:
                    for j in range(2, self.pf + 1):
                        row[j - 1] = row[j]
                    i = self.pf
                row[i] = b
            return
        self.pcur += 1
        if self.full:
            old = self.rows.pop(self.pcur, None)
            if old is not None:
                self.ptable.pop(old, None)
        row = [a, b] + [0] * (self.pf - 1)
        self.ptable[a] = row
        self.rows[self.pcur] = a
        if (self.pcur + 1) % SHARD == 0:
            need = SHARD * (self.pf * 8 + 8 + 4)
            if self.meta + need < self.max_meta:
                self.meta += need
            else:
                self.full = True
                self.pcur = 1


def mithril(
    keys: Sequence[int], capacity: int, object_size: int, mining_threshold: int = 5120, cycle_time: int = 2
) -> int:
    """Hits of LRU+Mithril (its ``mining-threshold``: mined at half as many keys; ``cycle-time``
    1: no second pass for an unread prefetched block)."""
    cache = LRUBytes(capacity)
    ref = MithrilRef(cache, capacity, mining_threshold, cycle_time)
    entries = cache.entries
    hits = 0
    for key in keys:
        hit = key in entries
        ref.find(key, hit)
        if hit:
            hits += 1
            entries.move_to_end(key)
        else:
            cache.insert(key, object_size)
        ref.prefetch(key, object_size)
    return hits


def block_ids(log: Any) -> np.ndarray:
    """The log's keys as libCacheSim's ids: block numbers where every key is one (shifted so the
    smallest is 1, as 0 means "empty" in Mithril's tables), otherwise numbered by first appearance
    from 1."""
    codes, names = log.key_codes()
    text = names.to_pylist()
    if all(name.isdigit() for name in text):
        ids = np.array([int(name) for name in text], np.int64)
        ids = ids - ids.min() + 1
        return np.asarray(ids[codes])
    return np.asarray(codes.astype(np.int64) + 1)


def main() -> None:
    from accesslog.log import read_log
    from accesslog.traces import read_trace
    from prefetch.sim import simulate

    p = argparse.ArgumentParser(prog="python -m bench.lcsref", description=__doc__.split("\n\n")[0])
    p.add_argument("trace", help="an access log, or a raw trace with --format")
    p.add_argument("--format", help="import the trace from this format first (see predis trace import)")
    p.add_argument("--cache", default="1%,5%,10%")
    p.add_argument("--object-size", type=int, default=4096)
    p.add_argument(
        "--obl-block-size", type=int, default=512, help="libCacheSim OBL's block-size (its default)"
    )
    p.add_argument("--budget", type=float, default=1.0, help="our simulator's prefetch budget per request")
    p.add_argument("--no-ours", action="store_true", help="the references only")
    args = p.parse_args()
    log = read_trace(args.trace, args.format) if args.format else read_log(args.trace)
    keys = block_ids(log)
    unique = int(np.unique(keys).size)
    seq = keys.tolist()
    name = log.source or args.trace
    print(f"{name}: {len(seq):,} requests, {unique:,} unique; every access a read; hit %")
    print(
        f"{'cache':>5}  {'libCacheSim OBL':>15}  {'(block-size ' + str(args.object_size) + ')':>17}  "
        f"{'our OBL k=4':>11}  {'our OBL':>8}  {'libCacheSim Mithril':>19}  {'our Mithril':>11}"
    )
    for spec in args.cache.split(","):
        share = float(spec.strip().rstrip("%")) / 100
        objects = math.floor(share * unique + 1e-9)
        capacity = objects * args.object_size
        ref = [
            obl(seq, capacity, args.object_size, args.obl_block_size),
            obl(seq, capacity, args.object_size, args.object_size),
            mithril(seq, capacity, args.object_size),
        ]
        ours = ["-", "-", "-"]
        if not args.no_ours:
            arms = ["obl:k=4", "obl", "mithril"]  # (k=4: libCacheSim's sequential-confidence-k)
            report = simulate(log, str(objects), arms, budget=args.budget, with_belady=False, writes="read")
            by = {a.arm: a for a in report.arms}
            ours = [f"{100 * by[a].hit_ratio:.2f}" for a in arms]
        r = [f"{100 * h / len(seq):.2f}" for h in ref]
        print(
            f"{spec:>5}  {r[0]:>15}  {r[1]:>17}  {ours[0]:>11}  {ours[1]:>8}  {r[2]:>19}  {ours[2]:>11}",
            flush=True,
        )


if __name__ == "__main__":
    main()
