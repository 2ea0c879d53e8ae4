"""An upper bound for the simulator only: a predictor that reads the future."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Oracle:
    """Knows the trace: after the i-th read it names the distinct keys of reads i+1 .. i+window, soonest
    first. With the same budget as every other arm it bounds what prefetching can do at that
    lookahead (not a proof of optimality: it ignores what its prefetches evict).

    ``own_client=1``: it knows only the future of the client that just read (the next ``window``
    reads of that client's stream), not which client reads next: a bound for predictors that follow
    each client's stream, as the model and the heuristics do. On a game server's ticks, for
    example, it names the rest of a player's tick but not the first read of the next player's."""

    name = "oracle"
    max_footprint = 0

    def __init__(
        self, keys: Sequence[str], window: int = 8, own_client: int = 0, clients: Sequence[int] | None = None
    ) -> None:
        self.keys = keys
        self.window = window
        self.i = -1
        self.following: list[int] | None = None
        if own_client:
            if clients is None:
                raise ValueError("own_client needs the trace's clients (simulator only)")
            self.following = next_of_same(np.asarray(clients)).tolist()

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.i += 1

    def predict(self, k: int) -> list[tuple[str, float]]:
        if self.following is None:
            upcoming = self.keys[self.i + 1 : self.i + 1 + self.window]
        else:
            upcoming, j = [], self.i
            following = self.following
            for _ in range(self.window):
                j = following[j] if 0 <= j < len(following) else -1
                if j < 0:
                    break
                upcoming.append(self.keys[j])
        out: dict[str, float] = {}
        for distance, key in enumerate(upcoming, 1):
            if key not in out:
                out[key] = 1.0 / distance
                if len(out) >= k:
                    break
        return list(out.items())

    def footprint(self) -> int:
        return 0


def next_of_same(values: np.ndarray) -> np.ndarray:
    """For each position, the index of the next position holding the same value (-1 if none): a
    client's next access (the oracle's own-client mode), a key's next request (Belady's MIN)."""
    n = values.size
    order = np.lexsort((np.arange(n), values))
    following = np.full(n, -1, np.int64)
    same = values[order[1:]] == values[order[:-1]]
    following[order[:-1][same]] = order[1:][same]
    return following
