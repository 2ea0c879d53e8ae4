"""The time budget of one `predis train` command (--max-seconds): where the time went, when the
training loop stops, and which replays after it still fit. No torch, no I/O; the clock is a
parameter, so tests drive time by hand.

The command runs in three parts: what does not depend on the model (encoding, the heuristics'
scores, the fallback replays), the training loop, and what needs the trained model (its
predictions on the validation reads, then the replays that choose the gate and the floor). The
first part cannot be cut short; the loop is checked before every step, not only between epochs
(an epoch of 300,000 reads took 500-1,500 s on a busy 2-core machine); and the replays after it
shrink to what is left: all of them, the gates without the floors, one gate, or none (then the
model is not used: the arm is its fallback, which is never worse).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

# The loop gets at least this share of what the first part left, however long the rest would take.
MIN_LOOP_SHARE = 0.5
# A replay of the ML arm against one of a heuristic, on the same reads (the heuristics' average),
# at 1,000,000 reads: on dev-b 1.5x on web and 2.6x on gaming (bench/HISTORY.md, "The budget":
# gate and floor replays 39.4 s and 58.3 s for 32 jobs, fallback replays 39.3 s and 33.0 s for
# 48); on dev-c (AVX2 only, noisier) 3.6x, 4.8x and 5.3x on gaming in three trainings (the budget
# report's ml_replay_ratio, or its parts; bench/RESULTS.md, "Training command's budget"). It sets
# how much room the loop leaves for the replays after it: too low, and the floors do not fit
# (3-4 points of hit ratio at 1% on gaming); too high, and the loop ends early.
GATED_REPLAY_COST = 4.6
# The model's predictions on the validation reads against one validation-loss pass over them
# (both are forward passes over the same reads; predicting also ranks candidates).
PREDICT_COST = 2.0
# What the replays after the loop may be cut to, most first.
AFTER_LOOP_PLANS = ("all", "no floors", "one gate", "none")  # (and "some floors": floors_that_fit)


class TimeBudget:
    def __init__(self, max_seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_seconds = max_seconds
        self.clock = clock
        self.t0 = self.last = clock()
        self.laps: dict[str, float] = {}
        self.workers = 1
        self.replay_seconds = 0.0  # one heuristic replay, as measured before the loop
        self.plan_costs: dict[str, float] = dict.fromkeys(AFTER_LOOP_PLANS, 0.0)
        self.after_loop_jobs: dict[str, int] = {}
        self.loop_start = 0.0
        self.val_windows_per_batch = 0.0
        self.val_seconds: float | None = None  # the last validation pass
        self.val_spent = 0.0
        self.steps = 0  # training steps run, all epochs together
        self.epochs = 0  # epochs begun
        self.epoch_steps = 0  # steps run in the last epoch begun
        self.steps_per_epoch = 0
        self.stopped = False  # the budget ended the loop (inside an epoch or between two)
        self.stopped_mid_epoch = False
        self.plan = "all"
        self.gate_round_seconds: float | None = None  # one round of the gates' replays, measured

    def now(self) -> float:
        """Seconds since the command started."""
        return self.clock() - self.t0

    def lap(self, name: str) -> float:
        """End the phase ``name``; returns its seconds."""
        now = self.clock()
        seconds = now - self.last
        self.laps[name] = round(seconds, 1)
        self.laps["total"] = round(now - self.t0, 1)
        self.last = now
        return seconds

    # ------------------------------------------------------------------ the loop

    def start_loop(
        self,
        replay_seconds: float,
        replays_run: int,
        workers: int,
        after_loop_jobs: dict[str, int],
        val_windows: int,
        batch: int,
    ) -> None:
        """``replay_seconds`` for ``replays_run`` heuristic replays on ``workers`` processes;
        ``after_loop_jobs``: the replays each plan after the loop adds (``gates``, ``floors``,
        ``one gate``); ``val_windows`` validation windows against ``batch`` training windows
        per step."""
        self.workers = max(1, workers)
        self.after_loop_jobs = dict(after_loop_jobs)
        self.reprice(replay_seconds / max(1, math.ceil(replays_run / self.workers)))
        self.val_windows_per_batch = val_windows / max(1, batch)
        self.loop_start = self.now()

    def reprice(self, replay_seconds: float) -> None:
        """Set one replay's seconds on a worker (the fallback's, before the ML arm over it), and
        with it what each plan after the loop costs: the fallback can change after the loop."""
        self.replay_seconds = replay_seconds
        jobs = self.after_loop_jobs
        gates, floors = jobs.get("gates", 0), jobs.get("floors", 0)
        self.plan_costs = {
            "all": self.replay_cost(gates) + self.replay_cost(floors),
            "no floors": self.replay_cost(gates),
            "one gate": self.replay_cost(jobs.get("one gate", 0)),
            "none": 0.0,
        }

    def replay_cost(self, jobs: int) -> float:
        """Seconds for ``jobs`` replays of the ML arm on the worker processes."""
        return math.ceil(jobs / self.workers) * self.replay_seconds * GATED_REPLAY_COST

    def plan_cost(self, plan: str) -> float:
        """Seconds the replays of ``plan`` (AFTER_LOOP_PLANS) take, as estimated at the loop's start."""
        return self.plan_costs[plan]

    def loop_deadline(self, predict_seconds: float) -> float:
        """When the loop must have ended (seconds since the start): early enough for the
        predictions and every replay, but never before MIN_LOOP_SHARE of what was left."""
        floor = self.loop_start + MIN_LOOP_SHARE * (self.max_seconds - self.loop_start)
        return max(floor, self.max_seconds - predict_seconds - self.plan_cost("all"))

    def _too_late(self) -> bool:
        """Whether another training step would end too late, counting the validation pass that
        follows it. The first step always runs (a model must come out)."""
        if not self.steps:
            return False
        now = self.now()
        step = (now - self.loop_start - self.val_spent) / self.steps
        val = self.val_seconds if self.val_seconds is not None else self.val_windows_per_batch * step / 3
        return now + step + val > self.loop_deadline(PREDICT_COST * val)

    def stop_before_step(self) -> bool:
        """Whether the loop must stop before the next step of this epoch."""
        if self._too_late():
            self.stopped = self.stopped_mid_epoch = True
            return True
        return False

    def epoch_begins(self) -> bool:
        """Start an epoch; False (and none started) if its first step would already end too late,
        so that no validation pass runs over an epoch of no steps."""
        if self._too_late():
            self.stopped = True
            return False
        self.epochs += 1
        self.epoch_steps = 0
        return True

    def step_done(self) -> None:
        self.steps += 1
        self.epoch_steps += 1

    def validated(self, seconds: float) -> None:
        self.val_seconds = seconds
        self.val_spent += seconds

    # ------------------------------------------------------------------ after the loop

    def plan_after_loop(self) -> str:
        """The most replays that fit in what is left (called once the predictions are made). The
        floors are not judged here: "all" when the gates fit, and the gates' replays, once run,
        say how many of the floors' fit too (floors_that_fit), which an estimate off by the machine
        cannot."""
        left = self.max_seconds - self.now()
        if self.plan_cost("no floors") <= left:
            self.plan = "all"
        else:
            self.plan = next((p for p in AFTER_LOOP_PLANS[2:] if self.plan_cost(p) <= left), "none")
        return self.plan

    def floors_that_fit(self, gate_seconds: float, gate_jobs: int, floor_jobs: int) -> int:
        """After the gates' replays (``gate_seconds`` for ``gate_jobs`` of them), how many of
        ``floor_jobs`` more of the same kind still fit, in whole rounds of the workers: all (the
        plan stays "all"), some ("some floors") or none ("no floors"). The gates' own replays
        price the floors' closely, where GATED_REPLAY_COST is an estimate a machine can miss."""
        per_round = gate_seconds / max(1, math.ceil(gate_jobs / self.workers))
        self.gate_round_seconds = per_round
        if not floor_jobs:
            return 0
        left = self.max_seconds - self.now()
        rounds = int(left // per_round) if per_round > 0 else math.ceil(floor_jobs / self.workers)
        fit = max(0, min(floor_jobs, rounds * self.workers))
        if fit < floor_jobs:
            self.plan = "some floors" if fit else "no floors"
        return fit

    def report(self) -> dict[str, Any]:
        """How the time was spent and what the budget cut, for metrics.json and the manifest."""
        total = self.now()
        return {
            "max_seconds": self.max_seconds,
            "seconds": round(total, 1),
            "over_by": round(max(0.0, total - self.max_seconds), 1),
            "loop_started_at": round(self.loop_start, 1),
            "steps": self.steps,
            "epochs": self.epochs,
            "steps_in_last_epoch": self.epoch_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "stopped": self.stopped,
            "stopped_mid_epoch": self.stopped_mid_epoch,
            "replays_after_loop": self.plan,
            # The ML arm's replay against a heuristic's as this run measured them (GATED_REPLAY_COST
            # is the estimate): one round of the gates' replays over one of the fallbacks'.
            "ml_replay_ratio": (
                round(self.gate_round_seconds / self.replay_seconds, 2)
                if self.gate_round_seconds is not None and self.replay_seconds
                else None
            ),
        }
