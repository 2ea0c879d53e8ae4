"""Features: the offline (numpy), torch and real-time extractors agree exactly on the same log."""

from __future__ import annotations

import math

import numpy as np
import pytest

from accesslog.generators import generate
from ml.features.offline import cooccurrence, features, features_torch
from ml.features.realtime import RealtimeFeatures
from ml.features.spec import FEATURES, FeatureConfig

CFG = FeatureConfig(window=50, horizon=2.0, recent_cap=5, cooccur_window=3)


def sample_log(n: int = 20_000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    log = generate("gaming", n, seed=5)
    codes, names = log.key_codes()
    return codes, log.timestamps(), names.to_pylist()


def realtime_run(
    codes: np.ndarray, ts: np.ndarray, names: list[str], cfg: FeatureConfig
) -> tuple[np.ndarray, RealtimeFeatures]:
    rt = RealtimeFeatures(cfg)
    rows = np.stack([rt.update(names[c], t) for c, t in zip(codes.tolist(), ts.tolist(), strict=True)])
    return rows, rt


def test_realtime_equals_offline() -> None:
    codes, ts, names = sample_log()
    off = features(codes, ts, CFG)
    rt, extractor = realtime_run(codes, ts, names, CFG)
    assert off.shape == (codes.size, len(FEATURES))
    for j, name in enumerate(FEATURES):
        np.testing.assert_allclose(rt[:, j], off[:, j], rtol=1e-6, atol=1e-6, err_msg=name)
    # The same co-occurrence table, keyed by names in real time and by codes offline.
    offline_pairs = {(names[a], names[b]): c for (a, b), c in cooccurrence(codes, CFG.cooccur_window).items()}
    assert dict(extractor.pairs) == offline_pairs


def test_torch_path_equals_numpy_path() -> None:
    pytest.importorskip("torch")
    codes, ts, _ = sample_log(30_000)
    np.testing.assert_allclose(features_torch(codes, ts, CFG), features(codes, ts, CFG), rtol=1e-6, atol=1e-6)


def test_features_on_a_hand_built_log() -> None:
    # Monday 2026-01-05 06:00 UTC, then reads at +0.5 s steps: a b a a c a
    t0 = 1767592800.0
    codes = np.array([0, 1, 0, 0, 2, 0])
    ts = t0 + 0.5 * np.arange(6)
    f = features(codes, ts, FeatureConfig(window=2, horizon=1.0, recent_cap=1, cooccur_window=2))
    col = {name: f[:, j] for j, name in enumerate(FEATURES)}
    assert col["first_seen"].tolist() == [1, 1, 0, 0, 1, 0]
    assert np.allclose(col["since_key"], np.log1p([0, 0, 1.0, 0.5, 0, 1.0]))
    assert np.allclose(col["count_so_far"], np.log1p([0, 0, 1, 2, 0, 3]))
    assert np.allclose(col["window_count"], np.log1p([0, 0, 1, 1, 0, 1]))  # in the previous 2 reads
    assert np.allclose(col["recent_count"], np.log1p([0, 0, 0, 1, 0, 0]))  # within 1 s, capped at 1
    assert col["hour_sin"][0] == pytest.approx(math.sin(2 * math.pi * 6 / 24), abs=1e-6)
    assert col["dow_sin"][0] == pytest.approx(math.sin(2 * math.pi * 0.25 / 7), abs=1e-6)  # Monday, 06:00


def test_realtime_memory_is_bounded() -> None:
    cfg = FeatureConfig(window=10, max_keys=100, max_pairs=200, cooccur_window=3)
    rt = RealtimeFeatures(cfg)
    for i in range(5000):
        rt.update(f"k{i % 997}", i * 0.01)
    assert len(rt.keys) <= 100 and len(rt.pairs) <= 200 and len(rt.window) <= 10


def test_extractor_without_pairs_gives_the_same_rows() -> None:
    """The stepper's extractor keeps no co-occurrence table; its feature rows are the same."""
    cfg = FeatureConfig(window=10, max_keys=100, max_pairs=200, cooccur_window=3)
    full, lean = RealtimeFeatures(cfg), RealtimeFeatures(cfg, pairs=False)
    rng = np.random.default_rng(3)
    for i, k in enumerate(rng.integers(0, 150, 3000).tolist()):
        assert full.values(f"k{k}", i * 0.01) == lean.values(f"k{k}", i * 0.01)
    assert len(full.pairs) > 0 and len(lean.pairs) == 0
