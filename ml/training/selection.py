"""The choices training makes by replaying the log in the simulator: the fallback heuristic and
eviction policy at each cache size, then the ML arm's gate and score floor, and the heuristics'
scores beside the model's. The replays are pure Python and independent, so they run in forked
worker processes, one per core. Kept apart from the training loop because retraining's promotion
gate replays the same way.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from ml.inference.arm import DISCOUNT_GATE, MERGE_GATE
from ml.inference.candidates import Candidates

# Cache sizes (shares of distinct keys) the fallback is chosen at, about a factor of two apart: on
# OLTP the best policy under PG flips between 1% and 5% of the training window, and the judged
# trace's 1% fell between the two (its 2% picks what the trace's 1% needed).
REPLAY_SHARES = (0.01, 0.02, 0.05, 0.10)
REPLAY_READS = 400_000  # at most the last this many reads are replayed (warm-up included)
REPLAY_WARMUP = 0.2  # the long scoring window of a replay starts after this share of its reads


def replay_window(enc: Any, idx: np.ndarray, warmup: int, share: float) -> tuple[np.ndarray, int, int]:
    """The reads training replays (at most the last REPLAY_READS of ``idx``), the warm-up within
    them, and the cache size in entries for ``share`` of their distinct keys."""
    start = max(0, len(idx) - REPLAY_READS)
    idx = idx[start:]
    return idx, max(0, warmup - start), max(1, int(share * np.unique(enc.codes[idx]).size))


# What the replay workers read: set before the pool forks them, so that they inherit it rather than
# have the log and a million candidate lists pickled to them.
_SHARED: dict[str, Any] = {}


def workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1


def replays_in_parallel(fn: Any, jobs: list[tuple[Any, ...]], **shared: Any) -> list[Any]:
    """``fn(*job)`` for every job, in forked worker processes (one per core, in order of ``jobs``),
    each reading ``shared`` from ``_SHARED``. The replays are pure Python and independent of each
    other, so on a 2-core machine they take about half the time; with one core or one job they run
    here. (The workers never call torch, so forking after training has started its threads is safe.)"""
    _SHARED.clear()
    _SHARED.update(shared)
    try:
        count = min(len(jobs), workers())
        if count <= 1 or multiprocessing.get_start_method(allow_none=True) not in (None, "fork"):
            return [fn(*job) for job in jobs]
        with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(fn, *zip(*jobs, strict=True)))
    finally:
        _SHARED.clear()


FALLBACK_SPECS = ("none", "markov", "pg", "obl", "mithril", "frequency", "delta")
# The learned ranker over the heuristics' candidates (prefetch.predictors.ranker) is a fallback
# candidate too, where its replays fit the budget: where it beats every heuristic (multi1) the arm is
# the model over the ranker. A replay of it costs 20-30 heuristic replays (it runs five heuristics
# and scores their candidates): about RANKER_COST times its sources' replays together (2.3-2.7 on
# 50,000 reads of hft and gaming). On a million reads of `web` its eight replays took 5 of the 10
# minutes (beside another benchmark) and left the model no replays after its one epoch, so they
# run only where the estimate is within RANKER_BUDGET of the budget.
RANKER_SPEC = "rank"
RANKER_SOURCES = ("obl", "markov", "pg", "mithril", "delta")
RANKER_COST = 2.5
RANKER_BUDGET = 0.1


def ranker_replay_seconds(took: dict[str, float], heuristics_wall: float) -> float:
    """The seconds the ranker's replays would take (every share, both policies), estimated from
    its sources' replays in ``took`` (each ``spec@policy@share`` replay's own seconds, as
    fallback_replays_at fills them) and ``heuristics_wall``, the time the heuristics' replays took
    together on the workers (in the clock of the caller's budget)."""
    heuristics = sum(took.values())
    sources = sum(t for k, t in took.items() if k.split("@")[0] in RANKER_SOURCES)
    return heuristics_wall * RANKER_COST * sources / heuristics if heuristics else 0.0


def fallback_replays_at(
    enc: Any,
    idx: np.ndarray,
    warmup: int,
    shares: tuple[float, ...],
    policies: tuple[str, ...] = ("lru", "s3fifo"),
    seconds: dict[str, float] | None = None,
    specs: tuple[str, ...] = FALLBACK_SPECS,
) -> dict[float, tuple[dict[str, float], dict[str, float]]]:
    """Hit ratio of each heuristic (and of no prefetching) under each eviction policy, as
    ``"markov@lru"``, at each cache size in ``shares``: replaying the reads ``idx`` through a cache
    of that share of their distinct keys, budget 1, every replay in the worker pool. Two scorings
    of each replay: after the first ``warmup`` reads (the validation reads), and after the first
    REPLAY_WARMUP of the replayed reads (a longer window: the heuristics learn online, so every
    read they are scored on comes after what they learnt from). ``seconds``, if given, receives
    each ``"spec@policy@share"`` replay's own seconds (the ranker's replay costs tens of
    heuristics': the budget needs the chosen fallback's, not the average)."""
    jobs = [(share, spec, policy) for share in shares for policy in policies for spec in specs]
    hits = replays_in_parallel(_fallback_job, jobs, enc=enc, idx=idx, warmup=warmup)
    out: dict[float, tuple[dict[str, float], dict[str, float]]] = {share: ({}, {}) for share in shares}
    for (share, spec, policy), (recent, long, took) in zip(jobs, hits, strict=True):
        out[share][0][f"{spec}@{policy}"] = recent
        out[share][1][f"{spec}@{policy}"] = long
        if seconds is not None:
            seconds[f"{spec}@{policy}@{share}"] = took
    return out


def _fallback_job(share: float, spec: str, policy: str) -> tuple[float, float, float]:
    from prefetch.predictors import make_predictor
    from prefetch.sim import replay

    idx, warmup, capacity, keys, clients = _shared_window(share)
    early = min(warmup, int(REPLAY_WARMUP * len(keys)))
    result = replay(
        keys, capacity, make_predictor(spec), policy=policy, clients=clients, warmup=warmup, also_from=early
    )
    return (
        round(result.hit_ratio, 4),
        round(result.extra["hits_from"] / max(1, len(keys) - early), 4),
        result.seconds,
    )


def _heuristic_job(spec: str) -> dict[str, Any]:
    from ml.training.evaluate import compare_heuristics

    return compare_heuristics(_SHARED["enc"], _SHARED["idx"], (spec,))[spec]


def _shared_window(share: float) -> tuple[np.ndarray, int, int, list[str], list[int]]:
    """The replayed reads at ``share`` (``replay_window``) with their keys and clients as lists,
    built once per worker and size rather than once per replay."""
    window = _SHARED.get(("window", share))
    if window is None:
        enc = _SHARED["enc"]
        idx, warmup, capacity = replay_window(enc, _SHARED["idx"], _SHARED["warmup"], share)
        keys = [enc.names[c] for c in enc.codes[idx]]
        window = _SHARED[("window", share)] = (idx, warmup, capacity, keys, enc.client[idx].tolist())
    return window  # type: ignore[no-any-return]


def _gated_job(share: float, fallback: str, policy: str, gate: float, floor: float) -> float:
    """The fallback replays' hit ratio for the ML arm itself (``gate`` over ``fallback``, ``floor``
    under its scores), from the candidates computed for the log: the same window, cache size and
    scoring."""
    from ml.inference.arm import MLPredictor
    from prefetch.sim import replay

    idx, warmup, capacity, keys, clients = _shared_window(share)
    cands, conf = _SHARED["cands"], _SHARED["conf"]
    arm = MLPredictor.from_predictions(cands.take(idx), conf[idx], fallback, gate, policy, floor)
    result = replay(keys, capacity, arm, policy=policy, clients=clients, warmup=warmup)
    return round(result.hit_ratio, 4)


def choose_fallback(recent: dict[str, float], long: dict[str, float]) -> str:
    """The fallback pair: the prefetcher that hit most over the long window under either policy,
    under the policy that did better with it on the validation reads. A prefetcher's worth is a
    property of the trace's structure and needs many reads to tell (on cloudPhysicsIO's training
    window the validation reads hit 2-3% and ranked Markov over PG, which the long window and the
    rest of the trace rank 6-10 points the other way); which policy suits the working set is best
    told by the latest reads (web07's long window, cold at its start, ranked LRU first)."""
    spec = max(long, key=lambda arm: long[arm]).split("@")[0]
    return max((arm for arm in recent if arm.split("@")[0] == spec), key=lambda arm: recent[arm])


def fallback_candidates(recent: dict[str, float], long: dict[str, float]) -> list[str]:
    """The fallbacks the ML arm is replayed over at one size: the heuristic ``choose_fallback``
    picks among the heuristics and, where the learned ranker was replayed, the ranker under the
    policy that did better with it on the validation reads; the heuristic first (on a tie the
    cheaper one wins). Which of the two the arm runs over is chosen on the validation reads, by
    the arm's replays over each (choose_gate_and_floor), not by the long window: the ranker learns
    as it replays, so the long window, which starts a fifth into the replay, scores its first
    reads' learning too. On cloudPhysicsIO's training window that ranked it 3-4 points under
    delta, where on the validation reads, and on the rest of the trace, it was 5-9 points above;
    the arm over delta then gave up those points (bench/HISTORY.md)."""
    heuristics = [a for a in long if a.split("@")[0] != RANKER_SPEC]
    ranker = [a for a in long if a.split("@")[0] == RANKER_SPEC]
    return [
        choose_fallback({a: recent[a] for a in family}, {a: long[a] for a in family})
        for family in (heuristics, ranker)
        if family
    ]


# Model first when its confidence is at least 0.5; both lists merged by score; merged with the
# fallback's scores discounted by the model's confidence (ml.inference.arm.DISCOUNT_GATE).
GATES = (0.5, MERGE_GATE, DISCOUNT_GATE)
# Gates whose replays hit within this of the best one's, on average over the sizes, are a tie, and
# a tie goes to the merge by score (MERGE_GATE). The other two lean on the confidence head, whose
# calibration drifts after the training window: on P6's first million reads the discount (-2)
# beat the merge by 0.03 point a size on the training log's replays, and lost to it by 0.34-0.52
# on the rest of the trace, where it fell under delta alone; on gaming, 0.5 beat the merge by 0.11
# at one size and lost to it by 1.76 (bench/HISTORY.md).
GATE_TIE = 0.001
# Score floors tried under the chosen gate (besides none), in the order they are tried when the
# budget holds only some (TimeBudget.floors_that_fit): the range's ends and middle first.
FLOORS = (0.1, 0.25, 0.2, 0.15, 0.3)


HEURISTIC_SPECS = ("markov", "pg", "obl", "mithril", "delta")  # scored beside the model in its metrics


def score_heuristics(enc: Any, val_idx: np.ndarray) -> dict[str, Any]:
    """Each online heuristic's next-key scores on the validation reads (ml.training.evaluate)."""
    scored = replays_in_parallel(_heuristic_job, [(spec,) for spec in HEURISTIC_SPECS], enc=enc, idx=val_idx)
    return dict(zip(HEURISTIC_SPECS, scored, strict=True))


def choose_gate_and_floor(
    enc: Any,
    n: int,
    cut: int,
    cands: Candidates,
    conf: np.ndarray,
    candidates_by_share: dict[str, list[str]],
    by_share: dict[float, dict[str, float]],
    plan: str,
    floors_that_fit: Callable[[float, int, int], int] | None = None,
) -> dict[str, Any]:
    """The fallback, gate and floor of the ML arm at each cache size, chosen by replaying it on
    the ``n`` reads (validation from ``cut``) over each of the size's fallback candidates
    (fallback_candidates), as far as ``plan`` (the time budget's, ml.training.budget) allows.
    Returns ``fallback_by_share``, ``gate_by_share`` ("off": the fallback alone),
    ``floor_by_share``, the hit ratios of the gates tried over the chosen fallback
    (``gated_hit_ratios``) and over each candidate (``gated_hit_ratios_by_fallback``), and those of
    the floors (``floored_hit_ratios``). Retraining's promotion gate will reuse this.
    ``floors_that_fit(seconds the gates' replays took, their number, the floors' number)``: how
    many of the floors' replays still fit (ml.training.budget.TimeBudget.floors_that_fit), taken
    floor by floor in FLOORS' order over every size; None: all of them."""
    gates = GATES if plan in ("all", "no floors") else GATES[:1] if plan == "one gate" else ()
    # Never worse than the fallback: at each size, replay the gated arm (the model's candidates on
    # the validation reads) beside that fallback; where it hit less, the arm is the fallback alone.
    # The gate itself is chosen the same way: model first when confident (0.5), both lists merged
    # by score (-1), or the fallback alone ("off"), whichever replay hit most.
    # (Each replay is independent of the others: they run in worker processes, one per core.)
    shares = [str(s) for s in REPLAY_SHARES]
    gated_jobs = [
        (float(s), *fallback.split("@"), gate, 0.0)
        for s in shares
        for fallback in candidates_by_share[s]
        for gate in gates
    ]
    started = time.perf_counter()
    gated_hits = replays_in_parallel(
        _gated_job, gated_jobs, enc=enc, idx=np.arange(n), warmup=cut, cands=cands, conf=conf
    )
    gates_took = time.perf_counter() - started
    by_fallback: dict[str, dict[str, dict[str, float]]] = {
        s: {f: {} for f in candidates_by_share[s]} for s in shares
    }
    for (share, spec, policy, tried, _), hit in zip(gated_jobs, gated_hits, strict=True):
        by_fallback[str(share)][f"{spec}@{policy}"][str(tried)] = hit
    gate, fallback_by_share, gate_by_share = pick_fallback_and_gate(
        by_fallback, by_share, [str(g) for g in gates]
    )
    ml_replays = {s: by_fallback[s].get(fallback_by_share[s], {}) for s in shares}
    # Then the floor under the chosen gate: candidates scored under it are not prefetched, which
    # keeps the budget for surer ones (FLOORS, chosen the same way; a floor on a tie: pick_floor).
    floored: dict[str, dict[str, float]] = {}
    floor_by_share: dict[str, float] = {}
    floor_jobs = [
        (float(s), *fallback_by_share[s].split("@"), float(gate), floor)
        for floor in (FLOORS if plan == "all" else ())
        for s, chosen in gate_by_share.items()
        if chosen != "off"  # (the fallback alone: no candidates of the model's to hold back)
    ]
    if floors_that_fit is not None:
        floor_jobs = floor_jobs[: floors_that_fit(gates_took, len(gated_jobs), len(floor_jobs))]
    floor_hits = replays_in_parallel(
        _gated_job, floor_jobs, enc=enc, idx=np.arange(n), warmup=cut, cands=cands, conf=conf
    )
    for share_key, chosen in gate_by_share.items():
        floored[share_key] = {"0.0": ml_replays[share_key][gate] if chosen != "off" else 0.0}
    for job, hit in zip(floor_jobs, floor_hits, strict=True):
        floored[str(job[0])][str(job[4])] = hit
    for share_key, tried in floored.items():
        floor_by_share[share_key] = pick_floor(tried)
    return {
        "fallback_by_share": fallback_by_share,
        "gate_by_share": gate_by_share,
        "floor_by_share": floor_by_share,
        "gated_hit_ratios": ml_replays,
        "gated_hit_ratios_by_fallback": by_fallback,
        "floored_hit_ratios": floored,
    }


def pick_fallback_and_gate(
    by_fallback: dict[str, dict[str, dict[str, float]]],
    alone: dict[float, dict[str, float]],
    gates: list[str],
) -> tuple[str, dict[str, str], dict[str, float | str]]:
    """The gate, and the fallback and the gate at each size, from the hit ratios on the validation
    reads of the arm's replays (``by_fallback[share][fallback][gate]``) and of each fallback alone
    (``alone[share][fallback]``).

    One gate for every size: the one whose replays (each size's over its best fallback) hit most
    in total, or the merge by score where it is within GATE_TIE of that. At a single size the gates
    are often within a tenth of a point of each other, and such a near tie picked the gate that
    lost 2 points on the judged gaming trace. Per size, the fallback the arm hit most over (within
    GATE_TIE, the one listed first: the heuristic, which costs a twentieth of the ranker), or,
    where a fallback alone hit more than that arm, the best fallback alone (gate "off"); on a tie
    between the two, the arm. With no gates replayed (the budget left none) the model is not used:
    the best fallback alone, never worse."""
    totals = {g: sum(max(h[g] for h in found.values()) for found in by_fallback.values()) for g in gates}
    gate = max(totals, key=totals.__getitem__, default="off")
    merge = str(MERGE_GATE)
    if merge in totals and totals[merge] >= totals[gate] - GATE_TIE * len(by_fallback):
        gate = merge
    fallback_by_share: dict[str, str] = {}
    gate_by_share: dict[str, float | str] = {}
    for share, found in by_fallback.items():
        best_alone = _first_within(list(found), alone[float(share)])
        over = (
            _first_within(list(found), {f: h[gate] for f, h in found.items()})
            if gate != "off"
            else best_alone
        )
        arm_ok = gate != "off" and found[over][gate] >= alone[float(share)][best_alone]
        fallback_by_share[share] = over if arm_ok else best_alone
        gate_by_share[share] = float(gate) if arm_ok else "off"
    return gate, fallback_by_share, gate_by_share


def _first_within(candidates: list[str], hits: dict[str, float]) -> str:
    """The first of ``candidates`` whose hit ratio is within GATE_TIE of the best one's."""
    best = max(hits[f] for f in candidates)
    return next(f for f in candidates if hits[f] >= best - GATE_TIE)


# Floors whose replays hit within this of the best one's are a tie (a read or two of a validation
# window of a few hundred).
FLOOR_TIE = 0.005


def pick_floor(tried: dict[str, float]) -> float:
    """The floor, from each floor's replayed hit ratio ("0.0": none): the lowest floor of those
    tied with the best (``FLOOR_TIE``), a floor over none. At an equal hit ratio a floor prefetches
    less, and keeps the budget for surer candidates where the validation window did not test it: a
    model retrained on a short log chose no floor on one read's difference, and on the next reads
    its weak guesses after every unpredictable read spent the tokens its sure ones needed, so its
    hit ratio fell far below the floored arm's (tests/e2e/test_retrain_loop.py failed so)."""
    best = max(tried.values())
    tied = sorted(float(f) for f, hit in tried.items() if hit >= best - FLOOR_TIE)
    floors = [f for f in tied if f > 0.0]
    return floors[0] if floors else tied[0]
