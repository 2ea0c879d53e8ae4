"""The classic hot-set warmer: keep the most frequently read keys in the cache."""

from __future__ import annotations

import heapq
from operator import itemgetter


class Frequency:
    """Counts reads per key in a bounded table (past ``max_keys`` keys, the less frequent half is
    dropped) and keeps the ``hot`` most frequent keys: a key joins the hot set when its count passes
    the hot set's smallest, which sorts the set (``hot`` + 1 keys) again, so no step scans the table. ``predict`` walks the hot set from the top in rotation, so a hot key that was evicted
    comes back within a few requests."""

    name = "frequency"

    def __init__(self, hot: int = 64, max_keys: int = 65_536, reorder: int = 1024) -> None:
        if hot < 1 or max_keys < hot:
            raise ValueError("frequency needs 1 <= hot <= max_keys")
        self.hot_size = hot
        self.max_keys = max_keys
        self.reorder = reorder  # reads between re-sorts of the hot set (its members' counts move meanwhile)
        self.max_footprint = max_keys + 2 * hot + 1
        self.counts: dict[str, int] = {}
        self.members: dict[str, None] = {}
        self.floor = 0  # the smallest count in the hot set when it was last cut back
        self.hot: list[tuple[str, float]] = []
        self.cursor = 0
        self.seen = 0

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        counts = self.counts
        c = counts.get(key, 0) + 1
        counts[key] = c
        self.seen += 1
        if c > self.floor and key not in self.members:
            self.members[key] = None
            self._cut()
        elif self.seen % self.reorder == 0:
            self._cut()
        if len(counts) > self.max_keys:
            keep = heapq.nlargest(self.max_keys // 2, counts.items(), key=itemgetter(1))
            self.counts = dict(keep)
            self._cut()

    def _cut(self) -> None:
        counts = self.counts
        top = sorted(((k, counts.get(k, 0)) for k in self.members), key=itemgetter(1), reverse=True)[
            : self.hot_size
        ]
        self.members = dict.fromkeys(k for k, _ in top)
        self.floor = top[-1][1] if len(top) >= self.hot_size else 0
        best = top[0][1] if top and top[0][1] else 1
        self.hot = [(k, c / best) for k, c in top]
        self.cursor = 0

    def predict(self, k: int) -> list[tuple[str, float]]:
        # A slice of the sorted hot list, so scores stay in descending order; at the end of the list
        # it comes back short and the next call starts again at the top.
        start = self.cursor
        picked = self.hot[start : start + k]
        self.cursor = 0 if start + k >= len(self.hot) else start + k
        return picked

    def footprint(self) -> int:
        return len(self.counts) + len(self.members) + len(self.hot)
