"""The learned ranker over the heuristics' candidates (prefetch.predictors.ranker): it does what no
single heuristic does on a planted rule, it keeps learning after the pattern changes where the same
ranker frozen does not, and its parts hold their bounds. Pure logic: the simulator in process."""

from __future__ import annotations

import random

import numpy as np
import pytest

from accesslog.log import AccessLog, make_table
from common.errors import ConfigError
from prefetch.predictors import make_predictor
from prefetch.predictors.ranker import Ranker, TinyMLP, _Pending
from prefetch.sim import simulate
from tests.helpers import phase_keys


def log_of(keys: list[str]) -> AccessLog:
    return AccessLog(
        make_table(np.arange(len(keys), dtype=float), keys, "GET", 1, "hand"), {"source": "hand"}
    )


def hit_ratios(keys: list[str], cache: str, arms: list[str], warmup: float) -> dict[str, float]:
    report = simulate(log_of(keys), cache, arms, with_belady=False, warmup=warmup)
    return {a.arm: a.hit_ratio for a in report.arms}


def test_ranker_learns_which_heuristic_is_right_in_each_phase() -> None:
    """Phases alternate: a scan (OBL's next number is right; Markov names the jump it learned) and
    pairs n, n+1 followed by a jump (OBL names n+2, wrong; Markov's learned jump is right). Each
    heuristic is right half of the time; the ranker over both follows the phase."""
    keys = phase_keys(40)
    got = hit_ratios(keys, "100", ["obl", "markov", "rank:sources=obl+markov"], warmup=0.3)
    assert got["rank:sources=obl+markov"] > max(got["obl"], got["markov"]) + 0.08, got


def test_ranker_by_default_follows_strides_no_other_source_names() -> None:
    """Block requests of 8 or 16 blocks, each read once, in runs that jump elsewhere now and then
    (a request's next one starts where it ends): no key repeats, so Markov, PG and Mithril learn
    nothing, and OBL waits for a stride of 1. The default ranker's delta source names n + 8 and
    n + 16, and it learns to trust them."""
    rng = random.Random(4)
    keys: list[str] = []
    n = 0
    while len(keys) < 8000:
        n = rng.randrange(10**7) * 64 if rng.random() < 0.05 else n + rng.choice((8, 16))
        keys.append(str(n))
    got = hit_ratios(keys, "64", ["obl", "markov", "pg", "mithril", "rank"], warmup=0.3)
    assert max(got["obl"], got["markov"], got["pg"], got["mithril"]) < 0.05, got
    assert got["rank"] > 0.5, got


def test_ranker_keeps_learning_after_the_pattern_changes() -> None:
    """A random walk follows rule b, then (longer) rule a, then b again: Markov still ranks a's
    successor first in the last part, so the right key is its second. The ranker that keeps
    fitting learns that; the same ranker frozen at the change keeps what it learned under a."""
    rng = random.Random(2)
    size = 400
    rule_a = [rng.randrange(size) for _ in range(size)]
    rule_b = [rng.randrange(size) for _ in range(size)]
    keys: list[str] = []

    def walk(rule: list[int], n: int, steps: int) -> int:
        for _ in range(steps):
            keys.append(f"k:{n}")
            n = rng.randrange(size) if rng.random() < 0.3 else rule[n]
        return n

    n = walk(rule_b, 0, 6000)
    n = walk(rule_a, n, 20_000)
    change = len(keys)
    walk(rule_b, n, 10_000)
    learning = "rank:sources=markov:refit=1000"
    frozen = f"{learning}:freeze_after={change}"
    got = hit_ratios(keys, "30", ["markov", learning, frozen], warmup=change / len(keys))
    assert got[learning] > got[frozen] + 0.015, got
    assert got[learning] > got["markov"] + 0.03, got


def test_ranker_prediction_shape_and_bounds() -> None:
    p = make_predictor("rank:sources=obl+markov:refit=50:window=200")
    assert isinstance(p, Ranker)
    rng = random.Random(0)
    for i in range(3000):
        key = f"b:{i}" if i % 3 else f"r:{rng.randrange(50)}"
        p.observe(key, float(i), False)
        got = p.predict(4)
        assert len(got) <= 4 and all(0.0 <= s <= 1.0 for _, s in got)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        assert p.footprint() <= p.max_footprint
    assert p.fits > 0 and p.model.fitted
    assert min(p.filled, p.window) <= 200


def test_ranker_floor_is_applied_to_the_probabilities_it_offers() -> None:
    """Scores are compared as log-odds against the floor's; what is offered is still a probability
    at or above the floor, the model's own for that candidate."""
    offered = {}
    for floor in (0.0, 0.3):
        p = make_predictor(f"rank:sources=obl+markov:refit=50:window=200:min_score={floor}")
        rng = random.Random(0)
        got: list[tuple[str, float]] = []
        for i in range(2000):
            key = f"b:{i}" if i % 3 else f"r:{rng.randrange(50)}"
            p.observe(key, float(i), False)
            got += p.predict(4)
        assert p.model.fitted and all(floor <= s <= 1.0 for _, s in got)
        offered[floor] = len(got)
    assert 0 < offered[0.3] < offered[0.0]
    x = p.model.mean + p.model.scale * np.random.default_rng(0).normal(size=(50, p.n_features))
    assert np.allclose(p.model.predict(x), 1.0 / (1.0 + np.exp(-p.model.logits(x))))


@pytest.mark.parametrize(
    ("spec", "message"),
    [("rank:sources=", "sources"), ("rank:sources=rank", "sources"), ("rank:horizon=0", ">= 1")],
)
def test_ranker_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_predictor(spec)


def test_pending_labels_reads_within_the_horizon_and_expires_the_rest() -> None:
    q = _Pending()  # (reads come in order of their expiry, as the ranker adds them)
    q.add(3, {"b": ["y"]})
    q.add(5, {"a": ["x"], "c": ["w"]})
    q.add(9, {"a": ["z", 1]})
    assert q.expire(4) == ["y"]  # b's time ran out unread
    assert q.read("a", 5) == ["x", "z", 1]  # every live read that named a
    assert q.read("a", 6) == [] and len(q) == 1
    assert q.expire(100) == ["w"] and len(q) == 0


def test_tiny_mlp_learns_a_nonlinear_rule() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(float)  # XOR: no linear model separates it
    model = TinyMLP(2, 16, 0.01, seed=0)
    for _ in range(30):
        model.fit(x, y, 1)
    assert ((model.predict(x) > 0.5) == (y > 0.5)).mean() > 0.9
