"""Probability graph (Griffioen & Appleton, USENIX Summer 1994).

Every read of b adds an arc a -> b from each key a read within the previous ``lookahead`` reads, so
an arc's count over the number of reads of a estimates the chance that b is read within the window
after a. On a read of a, the keys whose chance exceeds ``threshold`` are predicted, most likely
first. (libCacheSim's PG divides by the number of arcs added instead, which with a window of 20
keeps most chances under its 0.05 threshold; this follows the paper's definition.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import islice
from operator import itemgetter

try:
    # The C loop behind Counter.update, called on a plain dict: Counter.update's own Python
    # (an ABC isinstance check per call) and a Counter per new node cost more than the counting.
    from collections import _count_elements  # type: ignore[attr-defined]
except ImportError:  # not CPython

    def _count_elements(mapping: dict[str, int], iterable: Iterable[str]) -> None:
        get = mapping.get
        for elem in iterable:
            mapping[elem] = get(elem, 0) + 1


_BY_COUNT = itemgetter(1)


class _Node:
    __slots__ = ("arcs", "total", "best")

    def __init__(self) -> None:
        self.arcs: dict[str, int] = {}
        self.total = 0  # windows opened by this key
        self.best: list[tuple[str, int]] | None = None  # cached top arcs; None when stale


class ProbabilityGraph:
    """A read's window is credited in one step when it closes, ``lookahead`` reads later (one C-level
    count over the window), so the graph lags the trace by the window. Bounded: at most ``max_nodes``
    source keys (once full, new sources are not recorded, as in libCacheSim's PG) and ``max_arcs``
    arcs per node (past twice that, the weaker half is dropped)."""

    name = "pg"

    def __init__(
        self, lookahead: int = 10, threshold: float = 0.1, max_nodes: int = 100_000, max_arcs: int = 16
    ) -> None:
        if lookahead < 1:
            raise ValueError("pg needs lookahead >= 1")
        self.lookahead = lookahead
        self.threshold = threshold
        self.max_nodes = max_nodes
        self.max_arcs = max_arcs
        self.max_footprint = max_nodes * (2 * max_arcs + 1)
        self.graph: dict[str, _Node] = {}
        self.window: deque[str] = deque(maxlen=lookahead + 1)
        self.last: str | None = None

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        window = self.window
        window.append(key)
        self.last = key
        if len(window) <= self.lookahead:
            return
        src = window[0]
        node = self.graph.get(src)
        if node is None:
            if len(self.graph) >= self.max_nodes:
                return
            node = self.graph[src] = _Node()
        node.total += 1
        arcs = node.arcs
        _count_elements(arcs, islice(window, 1, None))
        arcs.pop(src, None)
        if len(arcs) > 2 * self.max_arcs:
            # The strongest max_arcs, ties in first-seen order (what Counter.most_common keeps).
            node.arcs = dict(sorted(arcs.items(), key=_BY_COUNT, reverse=True)[: self.max_arcs])
        node.best = None

    def predict(self, k: int) -> list[tuple[str, float]]:
        node = self.graph.get(self.last) if self.last is not None else None
        if node is None:
            return []
        if node.best is None:
            node.best = sorted(node.arcs.items(), key=_BY_COUNT, reverse=True)[:4]
        out = []
        total = node.total
        for key, count in node.best[:k]:
            chance = count / total  # may pass 1 when a key recurs inside one window
            if chance <= self.threshold:
                break
            out.append((key, min(1.0, chance)))
        return out

    def footprint(self) -> int:
        return len(self.graph) + sum(len(n.arcs) for n in self.graph.values())
