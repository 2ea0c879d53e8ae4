"""What the features are, shared by the offline and real-time extractors."""

from __future__ import annotations

from dataclasses import dataclass

# One row per access, in this order. Counts and times are log1p-scaled so they sit near [0, 10].
FEATURES = (
    "hour_sin",  # time of day, as a point on the unit circle (UTC)
    "hour_cos",
    "dow_sin",  # day of the week, likewise (Monday 00:00 is angle 0)
    "dow_cos",
    "first_seen",  # 1 if this key was never read before, else 0
    "since_key",  # log1p(seconds since this key's previous read); 0 when first seen
    "count_so_far",  # log1p(reads of this key before this one)
    "window_count",  # log1p(reads of this key among the previous `window` reads)
    "recent_count",  # log1p(reads of this key in the previous `horizon` seconds, at most `recent_cap`)
    "since_any",  # log1p(seconds since the previous read of any key): a lag feature of arrivals
)


@dataclass(frozen=True)
class FeatureConfig:
    window: int = 1000  # reads: the sliding window of window_count
    horizon: float = 60.0  # seconds: the window of recent_count
    recent_cap: int = (
        64  # recent_count is capped, so the real-time extractor keeps at most this many times per key
    )
    cooccur_window: int = 8  # reads: pairs (a, b) with b within this many reads after a are counted
    max_keys: int = 1_000_000  # real time: keys with state (least recently read dropped beyond)
    max_pairs: int = 4_000_000  # real time: co-occurrence pairs kept (oldest dropped beyond)
