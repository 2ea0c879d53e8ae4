"""Drift of the traffic's shape: how far the popularity of key templates has moved (issue 22).

A model learns which shapes of key follow which (``user:#:cart`` after ``user:#:profile``); when the
mix of shapes the clients read moves away from what it was, the model's knowledge ages. The
monitor counts each read's template (``common.keyshape.template_of``) over windows of ``window``
reads and, at the end of each, gives the Jensen-Shannon divergence (base 2: 0 for the same mix, 1
for mixes with nothing in common) between that window's template popularity and the reference
window's: the first full window after a start or a ``rebase`` (a new model swapped in). The ``top``
most read templates of the two windows are compared one by one, the rest as one "other" share.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from common.keyshape import template_of


def js_divergence(p: dict[str, float], q: dict[str, float]) -> float:
    """Jensen-Shannon divergence of two distributions over the same names (base 2, in [0, 1])."""
    total = 0.0
    for name in set(p) | set(q):
        a, b = p.get(name, 0.0), q.get(name, 0.0)
        m = (a + b) / 2
        if a > 0:
            total += a * math.log2(a / m) / 2
        if b > 0:
            total += b * math.log2(b / m) / 2
    return min(1.0, max(0.0, total))


def shares(counts: Counter[str], names: set[str]) -> dict[str, float]:
    n = sum(counts.values())
    if not n:
        return {}
    out = {name: counts.get(name, 0) / n for name in names}
    other = 1.0 - sum(out.values())
    if other > 1e-12:
        out["\0other"] = other
    return out


class DriftMonitor:
    def __init__(self, window: int = 10_000, top: int = 64) -> None:
        if window < 1 or top < 1:
            raise ValueError("drift window and top must be at least 1")
        self.window, self.top = window, top
        self.current: Counter[str] = Counter()
        self.seen = 0
        self.reference: Counter[str] | None = None
        self.js: float | None = None  # the latest window's divergence from the reference
        self.windows = 0

    def observe(self, key: str) -> None:
        self.current[template_of(key)] += 1
        self.seen += 1
        if self.seen >= self.window:
            self._close()

    def _close(self) -> None:
        window, self.current, self.seen = self.current, Counter(), 0
        self.windows += 1
        if self.reference is None:
            self.reference = window
            return
        names = {name for name, _ in self.reference.most_common(self.top)}
        names |= {name for name, _ in window.most_common(self.top)}
        self.js = js_divergence(shares(self.reference, names), shares(window, names))

    def rebase(self) -> None:
        """The next full window becomes the reference (a new model: its starting point)."""
        self.reference = None
        self.js = None

    def figures(self) -> dict[str, Any]:
        return {"drift_js": round(self.js, 4) if self.js is not None else None, "drift_windows": self.windows}
