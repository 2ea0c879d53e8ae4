"""Delta prefetching: after a read numbered n, fetch n + d for the strides d seen most often lately."""

from __future__ import annotations

from collections import OrderedDict, deque

from prefetch.predictors.obl import PARSE_CACHE, join_number, split_cached


class Delta:
    """A stride prefetcher generalised to the most common strides of the recent reads, as hardware
    stride and delta prefetchers (and the delta vocabulary of Hashemi et al.'s learned prefetcher)
    treat addresses.

    Keys are split into a template and their last number, as OBL splits them. Each client's read of a
    key with the same template as its previous read adds the difference of their numbers (the
    delta, never 0) to a window of the latest ``window`` deltas of all clients. After a read numbered
    n, ``predict`` names n + d for the window's most frequent deltas, scored by their share of it.
    OBL only knows the delta 1; block traces whose requests span several blocks move by the request's
    length instead (on cloudPhysicsIO a request of 64 KiB, 128 blocks of 512 bytes, is most often
    followed by the one 128 blocks on), and so do keys numbered by row with a fixed page size.

    The ranking is refreshed every ``refresh`` reads (so a read costs a dict update, not a sort), at
    most ``depth`` deltas are offered, and ``max_clients`` clients' previous keys are kept (the
    least recently seen one forgotten past that).

    Where numbers are ids given at random (sessions, entities), strides mean nothing, and offering
    them would fill the cache with keys nobody reads (on ``web`` and ``gaming`` at 5%, 81,000 and
    96,000 prefetches of precision 0.01 and 0.00, 7.5 and 10.9 points of hit ratio lost). So it
    keeps a moving average (rate 0.01) of the share of reads that followed one of its ranked
    strides, and names nothing while that is under ``min_accuracy``. At 0 it always names them,
    as the ranker runs it: the ranker learns a source's worth itself.
    """

    name = "delta"

    def __init__(
        self,
        window: int = 256,
        depth: int = 16,
        refresh: int = 16,
        max_clients: int = 4_096,
        min_accuracy: float = 0.1,
    ) -> None:
        if min(window, depth, refresh, max_clients) < 1:
            raise ValueError("delta needs window, depth, refresh and max_clients >= 1")
        if not 0.0 <= min_accuracy <= 1.0:
            raise ValueError("delta needs 0 <= min_accuracy <= 1")
        self.window, self.depth, self.refresh, self.max_clients = window, depth, refresh, max_clients
        self.min_accuracy = min_accuracy
        self.accuracy = 0.0  # the share of recent reads one of the ranked strides led to (a moving average)
        self.ranked: set[int] = set()
        self.max_footprint = PARSE_CACHE + window + max_clients + depth
        self.deltas: deque[int] = deque()
        self.counts: dict[int, int] = {}
        self.top: list[tuple[int, float]] = []
        self.previous: OrderedDict[int, tuple[str, int, str, int] | None] = OrderedDict()
        self.last: tuple[str, int, str, int] | None = None
        self.reads = 0
        self._parsed: dict[str, tuple[str, int, str, int] | None] = {}  # a bounded parse cache

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        cur = split_cached(self._parsed, key)
        previous = self.previous
        prev = previous.pop(client, None)
        previous[client] = cur
        if len(previous) > self.max_clients:
            previous.popitem(last=False)
        self.last = cur
        right = False
        if cur is not None and prev is not None and cur[0] == prev[0] and cur[2] == prev[2]:
            delta = cur[1] - prev[1]
            right = delta in self.ranked
            if delta:
                counts = self.counts
                self.deltas.append(delta)
                counts[delta] = counts.get(delta, 0) + 1
                if len(self.deltas) > self.window:
                    old = self.deltas.popleft()
                    left = counts[old] - 1
                    if left:
                        counts[old] = left
                    else:
                        del counts[old]
        self.accuracy += 0.01 * (right - self.accuracy)
        self.reads += 1
        if self.reads % self.refresh == 0:
            self._rank()

    def _rank(self) -> None:
        total, counts = len(self.deltas), self.counts
        # Most frequent first, ties by the smaller delta: a stable sort by count, descending, of the
        # deltas in ascending order (two sorts in C, where a (-count, delta) key ran Python per item).
        best = sorted(sorted(counts), key=counts.__getitem__, reverse=True)[: self.depth]
        self.top = [(d, counts[d] / total) for d in best]
        self.ranked = {d for d, _ in self.top}

    def predict(self, k: int) -> list[tuple[str, float]]:
        last = self.last
        if last is None or self.accuracy < self.min_accuracy:
            return []
        prefix, number, suffix, width = last
        out = []
        for d, score in self.top:
            n = number + d
            if n >= 0:
                out.append((join_number(prefix, n, suffix, width), score))
                if len(out) >= k:
                    break
        return out

    def footprint(self) -> int:
        return len(self._parsed) + len(self.deltas) + len(self.previous) + len(self.top)
