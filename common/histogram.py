"""A log-bucketed latency histogram (the proxy's statistics, the tier's served latency)."""

from __future__ import annotations

import math


class LatencyHistogram:
    """Log-bucketed latency histogram: constant memory, O(1) record, ~9% bucket resolution.

    Bucket i holds latencies in [2**(i/8), 2**((i+1)/8)) microseconds; percentiles report a
    bucket's upper edge, so they never understate.
    """

    __slots__ = ("counts", "total", "sum")
    SUB = 8  # buckets per power of two
    SIZE = SUB * 40  # up to 2**40 us, about 12 days

    def __init__(self) -> None:
        self.counts = [0] * self.SIZE
        self.total = 0
        self.sum = 0.0  # seconds, for a mean (Prometheus's histogram _sum)

    def record(self, seconds: float) -> None:
        us = seconds * 1e6
        i = int(math.log2(us) * self.SUB) if us > 1.0 else 0
        self.counts[i if i < self.SIZE else self.SIZE - 1] += 1
        self.total += 1
        self.sum += seconds

    def cumulative(self, bounds: list[float]) -> list[int]:
        """For each upper bound (seconds, ascending), the samples known to be at or under it: those
        whose bucket's upper edge is at or under it (as the percentiles, never an understatement).
        Prometheus's ``le`` buckets; the samples above the last bound are ``total`` less the last."""
        out = []
        seen = 0
        i = 0
        for bound in bounds:
            us = bound * 1e6
            while i < self.SIZE and 2 ** ((i + 1) / self.SUB) <= us:
                seen += self.counts[i]
                i += 1
            out.append(seen)
        return out

    def percentile(self, p: float) -> float:
        """Latency in microseconds at percentile p (0-100); 0.0 with no samples."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(self.total * p / 100.0))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return round(2 ** ((i + 1) / self.SUB), 1)
        return round(2 ** (self.SIZE / self.SUB), 1)
