"""An upper bound for the simulator only: a predictor that reads the future."""

from __future__ import annotations

from collections.abc import Sequence


class Oracle:
    """Knows the trace: after the i-th read it names the distinct keys of reads i+1 .. i+window, soonest
    first. With the same budget as every other arm it bounds what prefetching can do at that
    lookahead (not a proof of optimality: it ignores what its prefetches evict)."""

    name = "oracle"
    max_footprint = 0

    def __init__(self, keys: Sequence[str], window: int = 8) -> None:
        self.keys = keys
        self.window = window
        self.i = -1

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.i += 1

    def predict(self, k: int) -> list[tuple[str, float]]:
        upcoming = self.keys[self.i + 1 : self.i + 1 + self.window]
        out: dict[str, float] = {}
        for distance, key in enumerate(upcoming, 1):
            if key not in out:
                out[key] = 1.0 / distance
                if len(out) >= k:
                    break
        return list(out.items())

    def footprint(self) -> int:
        return 0
