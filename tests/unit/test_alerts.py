"""Alerts on live prediction's figures (proxy.alerts), without sockets: each rule fires past its
threshold and stops when the figure comes back, each can be turned off, and the drift measure
(prefetch.drift) behind one of them."""

from __future__ import annotations

from typing import Any

import pytest

from prefetch.drift import DriftMonitor, js_divergence
from proxy.alerts import RULES, Alerts

ALL = {
    "hit_ratio_drop": 0.05,
    "prediction_p99_ms": 50.0,
    "precision_min": 0.05,
    "drift_max": 0.2,
    "recall_drop": 0.15,
    "shed_share": 0.5,
    "engine_restarts": 1.0,
}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def arm(name: str = "ML", **figures: Any) -> dict[str, Any]:
    return {"name": name, "gets": 0, "hits": 0, **figures}


def names(fired: list[Any]) -> list[str]:
    return [f.name() for f in fired]


def test_hit_ratio_drop_against_the_arms_own_baseline() -> None:
    alerts = Alerts(dict(ALL), window_gets=1_000)
    gets = hits = 0
    for _ in range(5):  # windows at 60%: the baseline
        gets, hits = gets + 1_000, hits + 600
        started, _ = alerts.evaluate({}, {"arms": [arm(gets=gets, hits=hits)]})
        assert started == []
    gets, hits = gets + 1_000, hits + 570  # 57%: within 5 points
    assert alerts.evaluate({}, {"arms": [arm(gets=gets, hits=hits)]})[0] == []
    gets, hits = gets + 1_000, hits + 500  # 50%: 10 points under
    started, _ = alerts.evaluate({}, {"arms": [arm(gets=gets, hits=hits)]})
    assert names(started) == ["hit_ratio_drop:ML"] and started[0].value == pytest.approx(0.1, abs=0.01)
    gets, hits = gets + 500, hits + 250  # (half a window: no new judgement, still firing)
    assert alerts.evaluate({}, {"arms": [arm(gets=gets, hits=hits)]}) == ([], [])
    gets, hits = gets + 500, hits + 350  # back to 60% over the window
    _, stopped = alerts.evaluate({}, {"arms": [arm(gets=gets, hits=hits)]})
    assert names(stopped) == ["hit_ratio_drop:ML"] and alerts.fired["hit_ratio_drop"] == 1
    # PREDIS AB RESET (the arm's figures start again): a new baseline, nothing fires.
    assert alerts.evaluate({}, {"arms": [arm(gets=10, hits=0)]}) == ([], [])


@pytest.mark.parametrize(
    ("rule", "bad", "good"),
    [
        ("prediction_p99_ms", {"prediction_p99_us": 80_000.0}, {"prediction_p99_us": 3_000.0}),
        (
            "precision_min",
            {"precision": 0.01, "prefetch_fills": 500},
            {"precision": 0.4, "prefetch_fills": 500},
        ),
        (
            "recall_drop",
            {"predictor": {"live_recall": 0.5, "trained_recall": 0.9, "model_reads": 5_000}},
            {"predictor": {"live_recall": 0.85, "trained_recall": 0.9, "model_reads": 5_000}},
        ),
    ],
)
def test_per_arm_rules(rule: str, bad: dict[str, Any], good: dict[str, Any]) -> None:
    alerts = Alerts(dict(ALL))
    started, _ = alerts.evaluate({}, {"arms": [arm(**bad), arm("B", **good)]})
    assert names(started) == [f"{rule}:ML"]
    _, stopped = alerts.evaluate({}, {"arms": [arm(**good), arm("B", **good)]})
    assert names(stopped) == [f"{rule}:ML"] and not alerts.firing
    off = Alerts({**ALL, rule: 0.0})  # (0 turns it off)
    assert off.evaluate({}, {"arms": [arm(**bad)]}) == ([], [])
    # Too little to judge: no alert.
    thin = {**bad, "prefetch_fills": 10} if rule == "precision_min" else None
    if thin is not None:
        assert Alerts(dict(ALL)).evaluate({}, {"arms": [arm(**thin)]}) == ([], [])


def test_drift_shed_and_restart_rules() -> None:
    clock = Clock()
    alerts = Alerts(dict(ALL), hold=30.0, clock=clock)
    snap = {
        "prefetch_drift_js": 0.35,
        "prefetch_records": 0,
        "prefetch_predict_shed": 0,
        "prefetch_engine_starts": 1,
    }
    started, _ = alerts.evaluate(snap, None)
    assert names(started) == ["drift_max"]
    # (More shed than read in a window: the engine's counts of an earlier window came late. A
    # share, at most 1.)
    snap.update(prefetch_drift_js=0.05, prefetch_records=2_000, prefetch_predict_shed=2_500)
    clock.t = 1.0
    started, stopped = alerts.evaluate(snap, None)
    assert names(started) == ["shed_share"] and names(stopped) == ["drift_max"]
    assert started[0].value == 1.0
    snap.update(prefetch_records=4_000, prefetch_predict_shed=2_600, prefetch_engine_starts=2)
    clock.t = 2.0
    started, stopped = alerts.evaluate(snap, None)
    assert names(started) == ["engine_restarts"] and names(stopped) == ["shed_share"]
    clock.t = 20.0
    assert alerts.evaluate(snap, None) == ([], [])  # (held for 30 s)
    clock.t = 40.0
    _, stopped = alerts.evaluate(snap, None)
    assert names(stopped) == ["engine_restarts"]
    figures = alerts.figures()
    assert figures["active"] == 0 and all(
        figures[f"fired_{r}"] == (r in ("drift_max", "shed_share", "engine_restarts")) for r in RULES
    )
    with pytest.raises(ValueError, match="unknown alert rule"):
        Alerts({"nope": 1.0})


def test_drift_monitor_measures_a_change_of_mix() -> None:
    assert js_divergence({"a": 1.0}, {"a": 1.0}) == 0.0
    assert js_divergence({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    monitor = DriftMonitor(window=1_000)
    for i in range(3_000):  # the same mix of two templates, window after window
        monitor.observe(f"user:{i}:profile" if i % 2 else f"user:{i}:orders")
    assert monitor.windows == 3 and monitor.js is not None and monitor.js < 0.01
    for i in range(1_000):  # a new mix: half of it a template never seen
        monitor.observe(f"cart:{i}" if i % 2 else f"user:{i}:profile")
    assert monitor.js is not None and monitor.js > 0.3
    monitor.rebase()
    for i in range(2_000):
        monitor.observe(f"cart:{i}" if i % 2 else f"user:{i}:profile")
    assert monitor.js is not None and monitor.js < 0.01  # (the new mix is the reference now)
