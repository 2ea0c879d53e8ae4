"""The statistics the benchmarks report (pure logic)."""

from __future__ import annotations

import numpy as np

from bench.cpuside import median_interval


def test_the_median_interval_is_the_textbook_order_statistics() -> None:
    # n = 20: the 95% interval of the median is (x6, x15), coverage 95.9%; n = 5 has none (the
    # widest, x1 to x5, covers only 93.75%).
    assert median_interval([float(v) for v in range(20, 0, -1)]) == (6.0, 15.0)
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert median_interval([float(v) for v in range(1, 7)]) == (1.0, 6.0)  # (96.9%)


def test_the_median_interval_covers_the_median_at_least_as_often_as_it_says() -> None:
    rng = np.random.default_rng(7)
    for n in (12, 20, 40):
        covered = 0
        for _ in range(1_000):
            sample = rng.exponential(1.0, n).tolist()  # (skewed: the median is ln 2)
            low, high = median_interval(sample) or (np.inf, -np.inf)
            covered += low <= np.log(2) <= high
        assert covered / 1_000 >= 0.935, (n, covered)  # (each n: 96% or more, exactly)
