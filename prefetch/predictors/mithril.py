"""Mithril: mining sporadic associations for prefetching (Yang et al., SoCC 2017).

Frequent keys stay in the cache by themselves; what a cache misses are keys read now and then, often
together. Mithril records the logical times of those sporadic reads (misses only, by default) and
mines pairs whose time series line up:

* Recording table: keys seen fewer than ``min_support`` times, with their timestamps; a bounded ring,
  so the oldest records are overwritten.
* Mining table: keys with ``min_support`` to ``max_support`` timestamps. A key that reaches
  ``max_support`` is frequent, not sporadic, and is dropped. When the mining table holds
  ``mining_size`` keys, it is mined and cleared.
* Mining: keys sorted by first timestamp; b (its first timestamp within ``lookahead`` after a's) is
  a candidate for a when their timestamp counts differ by at most ``confidence`` and at most
  ``confidence`` of their paired timestamps are further than ``lookahead`` apart. Of a's
  candidates, the first (the nearest) joins a's prefetch list, and so does any other one with a
  timestamp exactly 1 from a's (read right after it), as in libCacheSim; the list is ``pf_list``
  long, oldest out first. Associating every candidate filled the list with the farthest ones (the
  last added): on the sequential P6 trace a read of block n fetched n+19 and n+20, so the first 19
  blocks of every run missed (46.6% hit ratio at 5% against 88.3%, bench/RESULTS.md). With the
  defaults (two timestamps, confidence 1) one close pair is enough, as in libCacheSim; requiring
  both pairs close halves the prefetches and costs 4 points of hit ratio on cloudPhysicsIO at 5%
  (bench/HISTORY.md).
* Prefetch table: at most ``max_entries`` source keys, oldest replaced first.
* Sizes: the recording table and the prefetch table grow with the cache (``choose``, called with
  the cache's entries by the simulator and the live engine), as libCacheSim gives them 2% and 10%
  of the cache's bytes: with 4 KiB blocks, ``RECORDING_PER_ENTRY`` and ``TABLE_PER_ENTRY`` rows per
  cache entry, never fewer than the defaults (or the sizes a spec names).

On a read of a, a's prefetch list is predicted.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

# Rows per cache entry, as libCacheSim sizes its tables for 4 KiB blocks: 2% of the cache's bytes in
# 14-byte recording rows, 10% in 28-byte prefetch rows (two targets).
RECORDING_PER_ENTRY = 6
TABLE_PER_ENTRY = 15
RECORDING_SIZE = 100_000
MAX_ENTRIES = 100_000


class Mithril:
    name = "mithril"

    def __init__(
        self,
        lookahead: int = 20,
        min_support: int = 2,
        max_support: int = 8,
        confidence: int = 1,
        pf_list: int = 2,
        mining_size: int = 2560,
        recording_size: int | None = None,
        max_entries: int | None = None,
        record: str = "miss",
    ) -> None:
        if not 1 <= min_support <= max_support:
            raise ValueError("mithril needs 1 <= min_support <= max_support")
        if record not in ("miss", "each"):
            raise ValueError("mithril's record is miss or each")
        self.lookahead = lookahead
        self.min_support = min_support
        self.max_support = max_support
        self.confidence = confidence
        self.pf_list = pf_list
        self.mining_size = mining_size
        if (recording_size is not None and recording_size < 1) or (
            max_entries is not None and max_entries < 1
        ):
            raise ValueError("mithril needs recording_size >= 1 and max_entries >= 1")
        self.fixed = (recording_size, max_entries)  # (sizes a spec named: choose keeps them)
        self.recording_size = recording_size or RECORDING_SIZE
        self.max_entries = max_entries or MAX_ENTRIES
        self.record_hits = record == "each"
        self._bound()
        self.ts = 0
        self.recording: OrderedDict[str, list[int]] = OrderedDict()
        self.mining: dict[str, list[int]] = {}
        self.table: OrderedDict[str, list[str]] = OrderedDict()
        self.last: str | None = None
        self.minings = 0

    def _bound(self) -> None:
        self.max_footprint = self.recording_size + self.mining_size + self.max_entries * (self.pf_list + 1)

    def choose(self, capacity: float) -> None:
        """Size the tables for a cache of ``capacity`` entries (see the module's "Sizes"); a table
        that shrinks drops its oldest rows at once."""
        recording, entries = self.fixed
        if capacity <= 0:
            return
        self.recording_size = recording or max(RECORDING_SIZE, math.ceil(RECORDING_PER_ENTRY * capacity))
        self.max_entries = entries or max(MAX_ENTRIES, math.ceil(TABLE_PER_ENTRY * capacity))
        while len(self.recording) > self.recording_size:
            self.recording.popitem(last=False)
        while len(self.table) > self.max_entries:
            self.table.popitem(last=False)
        self._bound()

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.ts += 1
        self.last = key
        if hit and not self.record_hits:
            return
        ts = self.ts
        series = self.mining.get(key)
        if series is not None:
            if len(series) >= self.max_support:
                del self.mining[key]  # frequent, not sporadic
            else:
                series.append(ts)
            return
        series = self.recording.get(key)
        if series is None:
            series = [ts]
            if len(series) < self.min_support:
                if len(self.recording) >= self.recording_size:
                    self.recording.popitem(last=False)
                self.recording[key] = series
                return
        else:
            series.append(ts)
            if len(series) < self.min_support:
                return
            del self.recording[key]
        self.mining[key] = series
        if len(self.mining) >= self.mining_size:
            self.mine()

    def mine(self) -> None:
        """Associate the mining table's keys pairwise (vectorized: each row against the rows that
        follow it by first timestamp; at most ``lookahead`` rows can, as timestamps are distinct)."""
        rows = sorted(self.mining.items(), key=lambda kv: kv[1][0])
        self.mining = {}
        self.minings += 1
        n = len(rows)
        if n < 2:
            return
        width = self.max_support
        ts = np.full((n, width), -(10**12), np.int64)  # padding never matches
        lengths = np.empty(n, np.int64)
        for i, (_, series) in enumerate(rows):
            ts[i, : len(series)] = series
            lengths[i] = len(series)
        la, conf = self.lookahead, self.confidence
        cols = np.arange(width)
        names = [key for key, _ in rows]
        first = np.ones(n, bool)  # no key after row i has been a candidate yet
        for d in range(1, min(la, n - 1) + 1):
            a, b = ts[:-d], ts[d:]
            la_len, lb_len = lengths[:-d], lengths[d:]
            near = (b[:, 0] - a[:, 0]) <= la
            if not near.any():
                break
            alike = near & (np.abs(la_len - lb_len) <= conf)
            shorter = np.minimum(la_len, lb_len)
            compared = cols[None, :] < shorter[:, None]
            gaps = np.abs(a - b)
            misses = ((gaps > la) & compared).sum(axis=1)
            adjacent = ((gaps == 1) & compared).any(axis=1)
            chosen = alike & (misses <= conf) & (first[:-d] | adjacent)
            first[:-d] &= ~alike
            for i in np.flatnonzero(chosen).tolist():
                self._associate(names[i], names[i + d])

    def _associate(self, a: str, b: str) -> None:
        targets = self.table.get(a)
        if targets is None:
            if len(self.table) >= self.max_entries:
                self.table.popitem(last=False)
            self.table[a] = [b]
        elif b not in targets:
            targets.append(b)
            if len(targets) > self.pf_list:
                del targets[0]

    def predict(self, k: int) -> list[tuple[str, float]]:
        targets = self.table.get(self.last) if self.last is not None else None
        if not targets:
            return []
        # Newer associations first: the list is FIFO, so the last added is the freshest evidence.
        return [(b, 1.0) for b in reversed(targets[-k:])]

    def footprint(self) -> int:
        return len(self.recording) + len(self.mining) + sum(1 + len(v) for v in self.table.values())
