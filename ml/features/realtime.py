"""Real-time features: the offline features, updated per access in O(1) with bounded memory.

The proxy calls :meth:`RealtimeFeatures.update` on every GET. Per-key state (read count, last read,
the last ``recent_cap`` read times) lives in an LRU-bounded map of ``max_keys`` keys; the
co-occurrence table keeps at most ``max_pairs`` pairs. Within those bounds the numbers equal the
offline ones exactly (tests/unit/test_features.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Hashable

import numpy as np

from ml.features.offline import US
from ml.features.spec import FEATURES, FeatureConfig

TWO_PI = 2 * math.pi


class _KeyState:
    __slots__ = ("count", "last_us", "recent")

    def __init__(self, cap: int) -> None:
        self.count = 0
        self.last_us = 0
        self.recent: deque[int] = deque(maxlen=cap)


class RealtimeFeatures:
    """``pairs=False`` keeps no co-occurrence table: the model's feature row does not read it (its
    candidates come from ``SuccessorCandidates``), and counting a read's pairs with the last
    ``cooccur_window`` reads is two thirds of the extractor's cost per read (6 of 8.5 us here)."""

    def __init__(self, cfg: FeatureConfig | None = None, pairs: bool = True) -> None:
        self.cfg = cfg or FeatureConfig()
        self.track_pairs = pairs
        self.keys: OrderedDict[Hashable, _KeyState] = OrderedDict()
        self.window: deque[Hashable] = deque()
        self.window_counts: dict[Hashable, int] = {}
        self.recent_keys: deque[Hashable] = deque(maxlen=self.cfg.cooccur_window)
        self.pairs: OrderedDict[tuple[Hashable, Hashable], int] = OrderedDict()
        self.last_us: int | None = None
        self.horizon_us = int(round(self.cfg.horizon * US))

    def update(self, key: Hashable, t: float) -> np.ndarray:
        """Features of this access (from what came before it), then record it."""
        return np.array(self.values(key, t), np.float32)

    def values(self, key: Hashable, t: float) -> list[float]:
        """``update`` as a list (the batched caller builds one array for many reads)."""
        cfg = self.cfg
        t_us = int(round(t * US))
        hour = (t % 86_400.0) / 3_600.0
        day = ((t / 86_400.0) + 3.0) % 7.0
        a, b = TWO_PI * hour / 24.0, TWO_PI * day / 7.0
        row = [math.sin(a), math.cos(a), math.sin(b), math.cos(b)] + [0.0] * (len(FEATURES) - 4)
        state = self.keys.get(key)
        if state is None:
            row[4] = 1.0
            state = _KeyState(cfg.recent_cap)
            self.keys[key] = state
            if len(self.keys) > cfg.max_keys:
                self.keys.popitem(last=False)
        else:
            self.keys.move_to_end(key)
            row[5] = math.log1p(max(0.0, (t_us - state.last_us) / US))
            row[6] = math.log1p(state.count)
            cut = t_us - self.horizon_us
            recent = state.recent
            while recent and recent[0] <= cut:
                recent.popleft()
            row[8] = math.log1p(len(recent))
        row[7] = math.log1p(self.window_counts.get(key, 0))
        row[9] = 0.0 if self.last_us is None else math.log1p(max(0.0, (t_us - self.last_us) / US))
        # Record the access.
        state.count += 1
        state.last_us = t_us
        state.recent.append(t_us)
        self.last_us = t_us
        self.window.append(key)
        self.window_counts[key] = self.window_counts.get(key, 0) + 1
        if len(self.window) > cfg.window:
            old = self.window.popleft()
            left = self.window_counts[old] - 1
            if left:
                self.window_counts[old] = left
            else:
                del self.window_counts[old]
        if not self.track_pairs:
            return row
        pairs = self.pairs
        for src in self.recent_keys:
            if src != key:
                pair = (src, key)
                pairs[pair] = pairs.get(pair, 0) + 1
        while len(pairs) > cfg.max_pairs:
            pairs.popitem(last=False)
        self.recent_keys.append(key)
        return row
