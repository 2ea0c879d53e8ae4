"""The predictor interface shared by the simulator, the live proxy and the ML model.

A predictor sees every read in order through ``observe(key, t, hit)`` and, when asked, names the keys
it expects next through ``predict(k)``: at most ``k`` (key, score) pairs, best first, scores in
[0, 1] and descending. ``hit`` says whether the cache served the read, which some predictors use
(Mithril learns from misses only). Work per call is constant or logarithmic, and memory is bounded:
``footprint()`` counts the table entries held, never above ``max_footprint``.
"""

from __future__ import annotations

from typing import Protocol


class Predictor(Protocol):
    name: str
    max_footprint: int

    def observe(self, key: str, t: float, hit: bool) -> None: ...

    def predict(self, k: int) -> list[tuple[str, float]]: ...

    def footprint(self) -> int: ...


class NoPrefetch:
    """Plain caching: predicts nothing. The baseline every other arm is compared with."""

    name = "none"
    max_footprint = 0

    def observe(self, key: str, t: float, hit: bool) -> None:
        pass

    def predict(self, k: int) -> list[tuple[str, float]]:
        return []

    def footprint(self) -> int:
        return 0
