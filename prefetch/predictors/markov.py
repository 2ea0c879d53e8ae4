"""First-order Markov successors: after key a, predict the keys that most often followed a."""

from __future__ import annotations

from collections import OrderedDict


class Markov:
    """A successor table with counts, learned from each client's own sequence of reads: ``max_keys`` source keys (the oldest source is dropped first),
    each with at most ``max_successors`` successors kept as a list sorted by count (a new successor
    replaces the least counted). ``predict`` returns the current key's top successors, scored by their
    share of its transitions."""

    name = "markov"

    def __init__(self, max_keys: int = 100_000, max_successors: int = 4, max_clients: int = 65_536) -> None:
        if max_keys < 1 or max_successors < 1:
            raise ValueError("markov needs max_keys >= 1 and max_successors >= 1")
        self.max_keys = max_keys
        self.max_successors = max_successors
        self.max_footprint = max_keys * (max_successors + 1) + max_clients + 1
        # source -> [total, [successor, count], ...] with the pairs sorted by count, highest first
        self.table: OrderedDict[str, list] = OrderedDict()  # type: ignore[type-arg]
        self.last: str | None = None
        # Each client's previous read, so that a transition is learned within one client's stream
        # (interleaved clients would otherwise teach successors that are only coincidences).
        self.max_clients = max_clients
        self.previous: OrderedDict[int, str] = OrderedDict()

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        previous = self.previous
        last = previous.get(client)
        previous[client] = key
        if last is not None:
            previous.move_to_end(client)
        elif len(previous) > self.max_clients:
            previous.popitem(last=False)
        self.last = key
        if last is not None:
            self.learn(last, key)

    def learn(self, last: str, key: str) -> None:
        """Count one transition from ``last`` to ``key`` (``observe`` does, within a client's stream)."""
        row = self.table.get(last)
        if row is None:
            if len(self.table) >= self.max_keys:
                self.table.popitem(last=False)
            self.table[last] = [1, [key, 1]]
            return
        row[0] += 1
        for i in range(1, len(row)):
            pair = row[i]
            if pair[0] == key:
                pair[1] += 1
                # Bubble up to keep the order (rows are a handful long).
                while i > 1 and row[i - 1][1] < pair[1]:
                    row[i - 1], row[i] = pair, row[i - 1]
                    i -= 1
                return
        if len(row) <= self.max_successors:
            row.append([key, 1])
        else:
            row[-1] = [key, 1]

    def predict(self, k: int) -> list[tuple[str, float]]:
        return self.successors(self.last, k) if self.last is not None else []

    def successors(self, key: str, k: int) -> list[tuple[str, float]]:
        """``key``'s top ``k`` successors and their shares of its transitions."""
        row = self.table.get(key)
        if row is None:
            return []
        total = row[0]
        return [(succ, count / total) for succ, count in row[1 : k + 1]]

    def footprint(self) -> int:
        return sum(len(row) for row in self.table.values()) + len(self.previous)
