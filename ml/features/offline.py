"""Offline features over a whole log, vectorized (numpy, or torch on a GPU for the heavy parts).

The log is given as int key codes (any integer ids) and float timestamps in time order. Every
per-key quantity is computed from one stable sort by (key, position); windowed counts are
``searchsorted`` into that order, so nothing loops over accesses in Python.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ml.features.spec import FEATURES, FeatureConfig

US = 1_000_000  # timestamps are compared in whole microseconds, as the real-time extractor does


def time_features(ts: np.ndarray) -> np.ndarray:
    hour = (ts % 86_400.0) / 3_600.0
    day = ((ts / 86_400.0) + 3.0) % 7.0  # 1970-01-01 was a Thursday: +3 makes Monday 0
    a, b = 2 * math.pi * hour / 24.0, 2 * math.pi * day / 7.0
    return np.stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=1)


def to_us(ts: np.ndarray) -> np.ndarray:
    return np.asarray(np.rint(ts * US), dtype=np.int64)


def _group_order(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order by (key, position), each access's previous occurrences count, group start per access)."""
    n = codes.size
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    lengths = np.diff(np.r_[starts, n])
    group_start_sorted = np.repeat(starts, lengths)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - group_start_sorted
    group_start = np.empty(n, np.int64)
    group_start[order] = group_start_sorted
    return order, rank, group_start


def features(codes: np.ndarray, ts: np.ndarray, cfg: FeatureConfig | None = None) -> np.ndarray:
    """(n, len(FEATURES)) float32 features of each access, from what came before it."""
    cfg = cfg or FeatureConfig()
    n = codes.size
    out = np.zeros((n, len(FEATURES)), np.float32)
    if n == 0:
        return out
    codes = codes.astype(np.int64)
    t_us = to_us(ts)
    order, rank, group_start = _group_order(codes)
    prev = np.full(n, -1, np.int64)
    has_prev = rank > 0
    sorted_pos = order  # position of the k-th element in (key, position) order
    inverse = np.empty(n, np.int64)
    inverse[order] = np.arange(n)
    prev[has_prev] = sorted_pos[inverse[has_prev] - 1]
    out[:, 0:4] = time_features(ts)
    out[:, 4] = ~has_prev
    since = np.where(has_prev, (t_us - t_us[np.maximum(prev, 0)]) / US, 0.0)
    out[:, 5] = np.log1p(np.maximum(since, 0.0))
    out[:, 6] = np.log1p(rank)
    # Reads of the same key among the previous `window` reads: occurrences before i minus those
    # before position i - window, found by searchsorted in the (key, position) order.
    span = n + cfg.window + 1
    combined = codes[order] * span + order + cfg.window
    before_cut = np.searchsorted(combined, codes * span + np.arange(n), side="left") - group_start
    out[:, 7] = np.log1p(rank - before_cut)
    # Reads of the same key in the previous `horizon` seconds (strictly later than t - horizon).
    rel = t_us - t_us[0]
    horizon_us = int(round(cfg.horizon * US))
    width = int(rel[-1]) + horizon_us + 2
    if codes.max() * width + width < 2**62:
        keyed = codes[order] * width + rel[order] + horizon_us
        too_old = np.searchsorted(keyed, codes * width + rel, side="right") - group_start
    else:  # offsets would overflow int64: a per-key search instead (rare: huge spans and key counts)
        too_old = np.array(
            [
                np.searchsorted(rel[order][s : s + r + 1], rel[i] - horizon_us, side="right")
                for i, (s, r) in enumerate(zip(group_start, rank, strict=True))
            ]
        )
    out[:, 8] = np.log1p(np.minimum(rank - too_old, cfg.recent_cap))
    gaps = np.diff(t_us, prepend=t_us[0]) / US
    out[:, 9] = np.log1p(np.maximum(gaps, 0.0))
    return out


def cooccurrence(codes: np.ndarray, window: int) -> dict[tuple[int, int], int]:
    """Counts of (a, b) with b read within ``window`` reads after a (a != b), as a sparse dict."""
    codes = codes.astype(np.int64)
    if codes.size < 2:
        return {}
    span = int(codes.max()) + 1
    pairs = []
    for d in range(1, min(window, codes.size - 1) + 1):
        a, b = codes[:-d], codes[d:]
        keep = a != b
        pairs.append(a[keep] * span + b[keep])
    flat = np.concatenate(pairs)
    uniq, counts = np.unique(flat, return_counts=True)
    return {(int(u // span), int(u % span)): int(c) for u, c in zip(uniq, counts, strict=True)}


def features_torch(
    codes: np.ndarray, ts: np.ndarray, cfg: FeatureConfig | None = None, device: str = "cpu"
) -> Any:
    """The heavy parts of :func:`features` (sorting, searches, windowed counts) in torch, for a GPU.

    Returns the same (n, len(FEATURES)) array, computed on ``device`` and brought back to numpy.
    """
    import torch

    cfg = cfg or FeatureConfig()
    n = codes.size
    if n == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    c = torch.as_tensor(codes.astype(np.int64), device=device)
    t_us = torch.as_tensor(to_us(ts), device=device)
    pos = torch.arange(n, device=device)
    order = torch.sort(c, stable=True).indices
    sc = c[order]
    is_start = torch.ones(n, dtype=torch.bool, device=device)
    is_start[1:] = sc[1:] != sc[:-1]
    starts = torch.nonzero(is_start).squeeze(1)
    lengths = torch.diff(torch.cat([starts, torch.tensor([n], device=device)]))
    gs_sorted = torch.repeat_interleave(starts, lengths)
    rank = torch.empty(n, dtype=torch.int64, device=device)
    rank[order] = pos - gs_sorted
    group_start = torch.empty(n, dtype=torch.int64, device=device)
    group_start[order] = gs_sorted
    inverse = torch.empty(n, dtype=torch.int64, device=device)
    inverse[order] = pos
    has_prev = rank > 0
    prev = torch.where(has_prev, order[torch.clamp(inverse - 1, min=0)], torch.zeros_like(pos))
    out = torch.zeros((n, len(FEATURES)), dtype=torch.float64, device=device)
    out[:, 0:4] = torch.as_tensor(time_features(ts), device=device)
    out[:, 4] = (~has_prev).double()
    since = torch.where(
        has_prev, (t_us - t_us[prev]).double() / US, torch.zeros(n, dtype=torch.float64, device=device)
    )
    out[:, 5] = torch.log1p(torch.clamp(since, min=0.0))
    out[:, 6] = torch.log1p(rank.double())
    span = n + cfg.window + 1
    combined = sc * span + order + cfg.window
    before_cut = torch.searchsorted(combined, c * span + pos, right=False) - group_start
    out[:, 7] = torch.log1p((rank - before_cut).double())
    rel = t_us - t_us[0]
    horizon_us = int(round(cfg.horizon * US))
    width = int(rel[-1]) + horizon_us + 2
    keyed = sc * width + rel[order] + horizon_us
    too_old = torch.searchsorted(keyed, c * width + rel, right=True) - group_start
    out[:, 8] = torch.log1p(torch.clamp(rank - too_old, max=cfg.recent_cap).double())
    gaps = torch.diff(t_us, prepend=t_us[:1]).double() / US
    out[:, 9] = torch.log1p(torch.clamp(gaps, min=0.0))
    return out.float().cpu().numpy()
