"""Mithril: mining sporadic associations for prefetching (Yang et al., SoCC 2017).

Frequent keys stay in the cache by themselves; what a cache misses are keys read now and then, often
together. Mithril records the logical times of those sporadic reads (misses only, by default) and
mines pairs whose time series line up:

* Recording table: keys seen fewer than ``min_support`` times, with their timestamps; a bounded ring,
  so the oldest records are overwritten.
* Mining table: keys with ``min_support`` to ``max_support`` timestamps. A key that reaches
  ``max_support`` is frequent, not sporadic, and is dropped. When the mining table holds
  ``mining_size`` keys, it is mined and cleared.
* Mining: keys sorted by first timestamp; a and b (b's first timestamp within ``lookahead`` after
  a's) are associated when their timestamp counts differ by at most ``confidence`` and at most
  ``confidence`` of their paired timestamps are further than ``lookahead`` apart. Then b joins a's
  prefetch list (``pf_list`` long, oldest out first). With the defaults (two timestamps, confidence
  1) one close pair is enough, as in libCacheSim; requiring both pairs close halves the
  prefetches and costs 4 points of hit ratio on cloudPhysicsIO at 5% (bench/HISTORY.md).
* Prefetch table: at most ``max_entries`` source keys, oldest replaced first.

On a read of a, a's prefetch list is predicted.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


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
        recording_size: int = 100_000,
        max_entries: int = 100_000,
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
        self.recording_size = recording_size
        self.max_entries = max_entries
        self.record_hits = record == "each"
        self.max_footprint = recording_size + mining_size + max_entries * (pf_list + 1)
        self.ts = 0
        self.recording: OrderedDict[str, list[int]] = OrderedDict()
        self.mining: dict[str, list[int]] = {}
        self.table: OrderedDict[str, list[str]] = OrderedDict()
        self.last: str | None = None
        self.minings = 0

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
        for d in range(1, min(la, n - 1) + 1):
            a, b = ts[:-d], ts[d:]
            la_len, lb_len = lengths[:-d], lengths[d:]
            near = (b[:, 0] - a[:, 0]) <= la
            if not near.any():
                break
            alike = np.abs(la_len - lb_len) <= conf
            shorter = np.minimum(la_len, lb_len)
            compared = cols[None, :] < shorter[:, None]
            misses = ((np.abs(a - b) > la) & compared).sum(axis=1)
            for i in np.flatnonzero(near & alike & (misses <= conf)).tolist():
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
