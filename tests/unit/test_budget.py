"""The training command's time budget (ml.training.budget): pure arithmetic on a clock the test
moves by hand."""

from __future__ import annotations

import pytest

from ml.training.budget import GATED_REPLAY_COST, MIN_LOOP_SHARE, TimeBudget


class HandClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


JOBS = {"gates": 12, "floors": 20, "one gate": 4}


def started(max_seconds: float, pre_loop: float, clock: HandClock) -> TimeBudget:
    """A budget whose 48 fallback replays took ``pre_loop`` seconds on 2 workers (one replay:
    pre_loop / 24 s), 10 validation windows against batches of 1."""
    budget = TimeBudget(max_seconds, clock)
    clock.t += pre_loop
    budget.lap("fallback_replays")
    budget.start_loop(pre_loop, 48, 2, JOBS, val_windows=10, batch=1)
    return budget


def test_replays_after_the_loop_shrink_to_what_is_left() -> None:
    clock = HandClock()
    budget = started(1000, 24, clock)  # one replay: 1 s; one of the ML arm: 2.6 s
    assert budget.plan_cost("all") == pytest.approx((6 + 10) * GATED_REPLAY_COST)
    assert budget.plan_cost("no floors") == pytest.approx(6 * GATED_REPLAY_COST)
    assert budget.plan_cost("one gate") == pytest.approx(2 * GATED_REPLAY_COST)
    # ("some floors" or "no floors" only once the gates' replays price the floors: floors_that_fit)
    for left, plan in ((100, "all"), (30, "all"), (10, "one gate"), (3, "none"), (-5, "none")):
        clock.t = 1000 + 1000 - left
        assert budget.plan_after_loop() == plan, left
        assert budget.report()["replays_after_loop"] == plan


def test_loop_checks_every_step_and_keeps_room_for_what_follows() -> None:
    """Steps of 1 s, a validation pass of 10/3 s (estimated from the steps), predictions twice
    that: the loop ends where the rest still fits, not at an epoch's end."""
    clock = HandClock()
    budget = started(200, 24, clock)
    deadline = 200 - 2 * 10 / 3 - budget.plan_cost("all")  # 24 s of pre-loop + 96 s of loop
    steps = 0
    while not budget.stop_before_step():
        clock.t += 1.0
        budget.step_done()
        steps += 1
        assert steps < 1000
    now = budget.now()
    assert now + 1 + 10 / 3 > deadline >= now + 10 / 3 - 1e-9  # the last step that fitted ran
    assert budget.report()["stopped_mid_epoch"] and budget.report()["steps"] == steps


def test_the_loop_gets_a_share_however_long_the_rest_would_be() -> None:
    clock = HandClock()
    budget = started(100, 50, clock)  # 50 s left; the replays after the loop alone would take 42 s
    budget.validated(20.0)  # a slow validation pass: predictions would take 40 s more
    assert budget.loop_deadline(40.0) == pytest.approx(50 + MIN_LOOP_SHARE * 50)


def test_the_first_step_always_runs() -> None:
    clock = HandClock()
    budget = started(10, 50, clock)  # the budget is spent before the loop begins
    assert not budget.stop_before_step()
    clock.t += 1
    budget.step_done()
    assert budget.stop_before_step()
    clock.t += 1
    assert budget.plan_after_loop() == "none"
    report = budget.report()
    assert report["over_by"] == pytest.approx(42, abs=0.1) and report["steps"] == 1


def test_a_budget_spent_at_an_epoch_boundary_starts_no_empty_epoch() -> None:
    """When the next epoch's first step would already end too late, no epoch begins (so no
    validation pass runs over an epoch of no steps), and the stop is not called mid-epoch."""
    clock = HandClock()
    budget = started(200, 24, clock)
    assert budget.epoch_begins()
    for _ in range(5):
        clock.t += 1.0
        budget.step_done()
    clock.t += 150  # (a long validation pass, say)
    assert not budget.epoch_begins()
    report = budget.report()
    assert report["stopped"] and not report["stopped_mid_epoch"]
    assert (report["epochs"], report["steps_in_last_epoch"]) == (1, 5)


def test_the_rankers_replays_are_estimated_from_its_sources_replays() -> None:
    """The ranker runs OBL, Markov, PG, Mithril and Delta and scores their candidates: its replays'
    estimate is RANKER_COST times its sources' share of the heuristics' replays, scaled to the
    wall time those took. Replays of heuristics it does not run (none, frequency) do not count."""
    from ml.training.selection import RANKER_COST, RANKER_SOURCES, ranker_replay_seconds

    took = {f"{spec}@lru@0.05": 1.0 for spec in RANKER_SOURCES} | {
        "none@lru@0.05": 3.0,
        "frequency@lru@0.05": 2.0,
    }
    assert ranker_replay_seconds(took, heuristics_wall=20.0) == pytest.approx(20.0 * RANKER_COST * 5 / 10)
    assert ranker_replay_seconds({}, heuristics_wall=20.0) == 0.0


def test_reprice_sets_what_the_plans_after_the_loop_cost() -> None:
    """When the fallback changes after the loop (the ranker replayed in the room the loop left),
    the plans are costed again at its replay's seconds."""
    clock = HandClock()
    budget = started(600, 48.0, clock)  # (one replay: 2 s)
    before = dict(budget.plan_costs)
    budget.reprice(20.0)
    assert budget.plan_costs["one gate"] == pytest.approx(10 * before["one gate"])
    assert budget.plan_costs["all"] == pytest.approx(10 * before["all"]) and budget.plan_costs["none"] == 0.0


def test_the_floors_shrink_to_what_the_gates_replays_show_fits() -> None:
    """The plan after the loop rests on an estimate; the gates' replays, once run, price the
    floors' (the same replays under a floor): 12 gate replays in 6 rounds of 2 workers took 60 s,
    10 s a round, so the 20 floor replays take 10 rounds, 100 s."""
    clock = HandClock()
    budget = started(1000, 24, clock)
    clock.t = 1000 + 850  # 150 s left
    assert budget.plan_after_loop() == "all"
    assert budget.report()["ml_replay_ratio"] is None  # (nothing measured yet)
    assert budget.floors_that_fit(60.0, 12, 20) == 20  # 100 s: all of them
    report = budget.report()
    assert report["replays_after_loop"] == "all"
    assert report["ml_replay_ratio"] == pytest.approx(10.0)  # 10 s a round against a 1 s replay
    clock.t = 1000 + 945  # 55 s left: 5 whole rounds
    assert budget.floors_that_fit(60.0, 12, 20) == 10
    assert budget.report()["replays_after_loop"] == "some floors"
    clock.t = 1000 + 992  # 8 s left: not one round
    assert budget.floors_that_fit(60.0, 12, 20) == 0
    assert budget.report()["replays_after_loop"] == "no floors"
    assert budget.floors_that_fit(60.0, 12, 0) == 0  # (no floors to replay)
