"""The predictor interface shared by the simulator, the live proxy and the ML model.

A predictor sees every read in order through ``observe(key, t, hit, client)`` and, when asked, names
the keys it expects next (after the last read observed) through ``predict(k)``: at most ``k`` (key,
score) pairs, best first, scores in [0, 1] and descending. ``hit`` says whether the cache served the
read, which some predictors use (Mithril learns from misses only); ``client`` identifies the stream
the read belongs to (a connection in the proxy, the log's client column in the simulator; 0 when
unknown), which Markov uses to follow each client's own sequence. Work per call is constant or logarithmic, and memory is bounded:
``footprint()`` counts the table entries held, never above ``max_footprint``.
"""

from __future__ import annotations

from typing import Protocol


class Predictor(Protocol):
    name: str
    max_footprint: int

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None: ...

    def predict(self, k: int) -> list[tuple[str, float]]: ...

    def footprint(self) -> int: ...


class NoPrefetch:
    """Plain caching: predicts nothing. The baseline every other arm is compared with."""

    name = "none"
    max_footprint = 0

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        pass

    def predict(self, k: int) -> list[tuple[str, float]]:
        return []

    def footprint(self) -> int:
        return 0
