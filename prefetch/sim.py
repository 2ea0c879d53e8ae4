"""Trace-driven simulator: replay an access log through a cache with a prefetcher, arm by arm.

The cache is the proxy's own eviction policy (:mod:`prefetch.policies`) over equal-size objects, its
capacity in entries. A read the cache holds is a hit; a miss is filled on demand. A write (any
access whose op is not a read: SET, DEL...) removes its key from the cache, as the live tier drops
a written key, and is not scored; the predictors still observe it. After each read the
arm's predictor observes it and may prefetch: every candidate not already cached is an upstream read
and costs one token of a bucket that gains ``budget`` tokens per request (so at most ``budget``
prefetches per request on average, the same for every arm). The first ``warmup`` share of the trace
warms caches and predictors but is not scored.

Bounds: an oracle arm (a predictor that reads the next requests, same budget) and Belady's MIN
without prefetching, computed by libCacheSim.
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import repeat
from typing import Any, cast

import numpy as np

from common.errors import ConfigError
from prefetch.policies import POLICIES, make_policy
from prefetch.predictors import SIMULATOR_ONLY, Predictor, make_predictor
from prefetch.predictors.oracle import next_of_same

# Candidates asked of a predictor per request: enough to step over ones already cached.
CANDIDATES = 4


@dataclass
class ArmResult:
    arm: str
    prefetcher: str
    policy: str
    capacity: int
    requests: int = 0  # scored requests
    hits: int = 0
    prefetches: int = 0  # prefetches issued while scoring
    prefetch_hits: int = 0  # prefetched entries read before their eviction
    seconds: float = 0.0  # the whole replay's, warm-up included
    replayed: int = 0  # accesses replayed, warm-up included: the arm does the same work on all
    footprint: int = 0
    # Filled in by compare():
    coverage: float = 0.0
    vs_none: float = 1.0
    vs_best: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def miss_ratio(self) -> float:
        return 1.0 - self.hit_ratio if self.requests else 0.0

    @property
    def misses(self) -> int:
        return self.requests - self.hits

    @property
    def precision(self) -> float:
        return self.prefetch_hits / self.prefetches if self.prefetches else 0.0

    @property
    def upstream_per_request(self) -> float:
        return (self.misses + self.prefetches) / self.requests if self.requests else 0.0

    @property
    def requests_per_s(self) -> float:
        """Replay speed: accesses replayed (warm-up included) per second of the replay."""
        return (self.replayed or self.requests) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out.update(self.extra)
        for name in (
            "hit_ratio",
            "miss_ratio",
            "misses",
            "precision",
            "upstream_per_request",
            "requests_per_s",
        ):
            out[name] = getattr(self, name)
        return out


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused, as it was after. Objects are still freed when
    their last reference goes; only reference cycles wait for the collector, and the predictors
    make none (tests/data/test_sim.py replays each and finds nothing left). Its passes over the
    predictors' tables (the ranker's feature rows and pending reads, Markov's and PG's successors)
    were a good part of the ranker's replay time (bench/RESULTS.md, the ranker's speed before and
    after)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@cyclic_gc_paused()
def replay(
    keys: Sequence[str],
    capacity: int,
    predictor: Predictor,
    *,
    policy: str = "lru",
    budget: float = 1.0,
    warmup: int = 0,
    times: Sequence[float] | None = None,
    clients: Sequence[int] | None = None,
    also_from: int | None = None,
    writes: Sequence[bool] | None = None,
    delay: float = 0.0,
    arrivals: Sequence[float] | None = None,
) -> ArmResult:
    """Replay ``keys`` through a ``capacity``-entry cache with ``predictor``; score from ``warmup`` on.
    ``writes``: which accesses are writes (None: all are reads); a write drops its key.
    ``delay``: a prefetch reaches the cache this long after the read it was predicted from, in the
    time of ``arrivals`` (each access's time in the log), as a live proxy's prediction and upstream
    read take time; a read of the key before then misses (``extra["late"]`` counts those). 0: at
    once, before the next access.
    With ``also_from`` (at most ``warmup``), ``extra["hits_from"]`` also counts the hits from that
    read on, for a second, longer scoring window of the same replay."""
    if capacity < 1:
        raise ConfigError("cache capacity must be at least one entry")
    early = warmup if also_from is None else also_from
    if early > warmup:
        raise ValueError("also_from must not be after warmup")
    early_hits = 0  # hits in [early, warmup)
    cache = make_policy(policy, capacity)
    insert, touch, remove = cache.insert, cache.touch, cache.remove
    victim = cast(Callable[[], str], cache.victim)
    observe, predict = predictor.observe, predictor.predict
    present: dict[str, int] = {}  # key -> 0 demand-filled, 1 prefetched in warm-up, 2 prefetched when scored
    hits = prefetches = prefetch_hits = 0
    tokens = 0.0
    cap_tokens = max(2.0, 4 * budget)  # unused budget is lost beyond a short burst
    clock = times if times is not None else range(len(keys))
    streams = clients if clients is not None else [0] * len(keys)
    is_write = writes if writes is not None else repeat(False, len(keys))
    written = 0  # writes while scoring
    if delay and arrivals is None:
        raise ValueError("a prefetch delay needs the accesses' times (arrivals)")
    pending: deque[tuple[float, str, int]] = deque()  # prefetches on their way: (due, key, flag)
    coming: set[str] = set()
    late = 0
    started = time.perf_counter()
    for i, (key, t, client, write) in enumerate(zip(keys, clock, streams, is_write, strict=True)):
        scored = i >= warmup
        if delay:
            now = arrivals[i]  # type: ignore[index]
            while pending and pending[0][0] <= now:
                _, cand, due_flag = pending.popleft()
                coming.discard(cand)
                if cand in present:
                    continue  # (read, and filled, before it came: counted late then)
                if len(present) >= capacity:
                    del present[victim()]
                present[cand] = due_flag
                insert(cand, 1)
            if key in coming and not write and key not in present:
                coming.discard(key)  # (its prefetch, when it comes, finds the key read and held)
                if scored:
                    late += 1
        if write:
            if key in present:
                del present[key]
                remove(key)
            observe(key, t, False, client)
            if scored:
                written += 1
            continue
        flag = present.get(key)
        if flag is not None:
            hit = True
            touch(key)
            if flag:
                present[key] = 0
                if flag == 2 and scored:
                    prefetch_hits += 1
            if scored:
                hits += 1
            elif i >= early:
                early_hits += 1
        else:
            hit = False
            if len(present) >= capacity:
                del present[victim()]
            present[key] = 0
            insert(key, 1)
        observe(key, t, hit, client)
        if budget:
            tokens += budget
            if tokens > cap_tokens:
                tokens = cap_tokens
            if tokens >= 1.0:
                for cand, _score in predict(CANDIDATES):
                    if cand in present:
                        continue
                    if delay:
                        if cand in coming:
                            continue
                        coming.add(cand)
                        pending.append((now + delay, cand, 2 if scored else 1))
                        tokens -= 1.0
                        if scored:
                            prefetches += 1
                        if tokens < 1.0:
                            break
                        continue
                    if len(present) >= capacity:
                        del present[victim()]
                    present[cand] = 2 if scored else 1
                    insert(cand, 1)
                    tokens -= 1.0
                    if scored:
                        prefetches += 1
                    if tokens < 1.0:
                        break
    seconds = time.perf_counter() - started
    result = ArmResult(
        arm="",
        prefetcher=predictor.name,
        policy=policy,
        capacity=capacity,
        requests=max(0, len(keys) - warmup) - written,
        hits=hits,
        prefetches=prefetches,
        prefetch_hits=prefetch_hits,
        seconds=seconds,
        replayed=len(keys),
        footprint=predictor.footprint(),
    )
    if also_from is not None:
        result.extra["hits_from"] = hits + early_hits
    if writes is not None:
        result.extra["writes"] = written
    if delay:
        result.extra["late"] = late
    return result


def next_use(codes: np.ndarray) -> np.ndarray:
    """For each request, the index of the next request to the same key (-1 if none)."""
    return next_of_same(codes)


def belady(codes: np.ndarray, capacity: int, warmup: int = 0, writes: np.ndarray | None = None) -> ArmResult:
    """Belady's MIN without prefetching, by libCacheSim (it evicts the key used furthest ahead).
    ``writes``: a write removes its key (``remove``) and is not scored; a read whose key is next
    written before it is read again is never reused."""
    import libcachesim as lcs

    cache = lcs.Belady(cache_size=capacity)
    req = lcs.Request()
    req.obj_size = 1
    nxt = next_use(codes)
    never = np.iinfo(np.int64).max
    is_write = np.zeros(codes.size, bool) if writes is None else np.asarray(writes, bool)
    if writes is not None:
        nxt = np.where((nxt >= 0) & is_write[np.maximum(nxt, 0)], -1, nxt)
    hits = 0
    written = 0
    started = time.perf_counter()
    for i, (key, n, write) in enumerate(zip(codes.tolist(), nxt.tolist(), is_write.tolist(), strict=True)):
        if write:
            cache.remove(key)
            written += i >= warmup
            continue
        req.obj_id = key
        req.next_access_vtime = n if n >= 0 else never
        if cache.get(req) and i >= warmup:
            hits += 1
    result = ArmResult("belady", "belady", "min", capacity, requests=codes.size - warmup - written, hits=hits)
    result.seconds = time.perf_counter() - started
    return result


def libcachesim_lru(
    codes: np.ndarray, capacity: int, warmup: int = 0, writes: np.ndarray | None = None
) -> int:
    """libCacheSim's LRU hit count on the same key sequence (per-request ``get``, a write a
    ``remove``): the cross-check."""
    import libcachesim as lcs

    cache = lcs.LRU(cache_size=capacity)
    req = lcs.Request()
    req.obj_size = 1
    hits = 0
    is_write = [False] * codes.size if writes is None else np.asarray(writes, bool).tolist()
    for i, (key, write) in enumerate(zip(codes.tolist(), is_write, strict=True)):
        if write:
            cache.remove(key)
            continue
        req.obj_id = key
        if cache.get(req) and i >= warmup:
            hits += 1
    return hits


def parse_capacity(spec: str, unique: int) -> int:
    """Entries from "1000" or "10%" (floor of that share of the unique keys)."""
    text = spec.strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100.0
            if not share > 0:
                raise ConfigError(f"cache size {spec} must be positive")
            capacity = math.floor(share * unique + 1e-9)
        else:
            capacity = int(text)
    except ValueError:
        raise ConfigError(f"cache size {spec!r} is neither a number of entries nor a percentage") from None
    if capacity < 1:
        raise ConfigError(f"cache size {spec} is {capacity} entries: it must be at least 1")
    if capacity >= unique:
        raise ConfigError(
            f"cache size {spec} ({capacity} entries) is not smaller than the trace's {unique} unique keys: nothing would be evicted"
        )
    return capacity


@dataclass
class SimReport:
    trace: str
    requests: int  # every access, reads and writes
    unique_keys: int
    capacity: int
    cache: str
    budget: float
    warmup: float
    arms: list[ArmResult]
    best_heuristic: str = ""
    writes: int = 0  # accesses that write (not scored; they drop their key)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "arms"}
        out["arms"] = [a.as_dict() for a in self.arms]
        return out


def is_heuristic(arm: ArmResult) -> bool:
    return arm.prefetcher not in (*SIMULATOR_ONLY, "belady", "ml")


def compare(arms: list[ArmResult]) -> str:
    """Fill in coverage and ratios against the no-prefetch arm (same policy) and the best heuristic."""
    base = {a.policy: a for a in arms if a.prefetcher == "none"}
    heuristics = [a for a in arms if is_heuristic(a)]
    best = max(heuristics, key=lambda a: a.hit_ratio) if heuristics else None
    first_none = next(iter(base.values()), None)
    for a in arms:
        none = base.get(a.policy, first_none)
        if none is not None and none.misses:
            a.coverage = (none.misses - a.misses) / none.misses
            a.vs_none = a.miss_ratio / none.miss_ratio
        if best is not None and best.miss_ratio:
            a.vs_best = a.miss_ratio / best.miss_ratio
    return best.arm if best is not None else ""


def simulate(
    log: Any,
    cache: str,
    prefetchers: Sequence[str],
    *,
    policies: Sequence[str] = ("lru",),
    budget: float = 1.0,
    warmup: float = 0.0,
    with_belady: bool = True,
    writes: str = "drop",
    delay: float = 0.0,
) -> SimReport:
    """Run every (prefetcher, policy) arm over ``log`` at one cache size; arms see the same trace.
    ``writes``: "drop" (a write removes its key and is not scored, as the live tier does) or
    "read" (every access is a read: libCacheSim's convention for block traces). ``delay``: seconds
    of the log's time between a read and the arrival of the prefetches predicted from it."""
    codes, names = log.key_codes()
    n = int(codes.size)
    if n == 0:
        raise ConfigError(f"trace {log.source or ''} is empty".replace("  ", " "))
    if not 0 <= warmup < 1:
        raise ConfigError(f"warm-up share must be in [0, 1), not {warmup}")
    if budget < 0:
        raise ConfigError(f"prefetch budget must be at least 0, not {budget}")
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"unknown eviction policy {p!r}; known: {', '.join(POLICIES)}")
    capacity = parse_capacity(cache, len(names))
    keys = log.keys()
    times = [float(i) for i in range(n)]
    if delay < 0:
        raise ConfigError(f"prefetch delay must be at least 0, not {delay}")
    arrivals = log.timestamps().tolist() if delay else None
    clients = log.clients().tolist()
    if writes not in ("drop", "read"):
        raise ConfigError(f"writes must be drop or read, not {writes!r}")
    write_mask = log_writes(log) if writes == "drop" else np.zeros(n, bool)
    write_flags = write_mask.tolist() if write_mask.any() else None
    warm = int(warmup * n)
    specs = list(dict.fromkeys(["none", *prefetchers]))
    for spec in specs:  # fail on a bad spec before any arm runs (the ML arm's load is the check)
        if not spec.startswith("ml:"):
            make_predictor(spec, trace_keys=keys, log=log)
    arms = []
    for policy in policies:
        for spec in specs:
            predictor = make_predictor(spec, trace_keys=keys, log=log)
            choose = getattr(predictor, "choose", None)
            if choose is not None:  # the ML arm: its fallback and policy for this cache size
                choose(capacity)
            # An ML arm runs under the policy its training chose (recorded in the model), if any.
            own = getattr(predictor, "policy", "") if len(policies) == 1 else ""
            if own and own not in POLICIES:
                raise ConfigError(f"{spec}: unknown eviction policy {own!r}; known: {', '.join(POLICIES)}")
            result = replay(
                keys,
                capacity,
                predictor,
                policy=own or policy,
                budget=budget,
                warmup=warm,
                times=times,
                clients=clients,
                writes=write_flags,
                delay=delay,
                arrivals=arrivals,
            )
            result.arm = spec if len(policies) == 1 and own in ("", policy) else f"{spec}@{own or policy}"
            if choose is not None:  # (with several policies every arm runs under each: say which it chose)
                result.extra["chosen_policy"] = getattr(predictor, "policy", "") or policy
                result.extra["fallback"] = getattr(predictor, "fallback_spec", "")
                tuned = getattr(predictor, "finetuned", None)  # (an ML arm learning as it replays)
                if tuned:
                    result.extra["finetunings"] = len(tuned["spans"])
            arms.append(result)
    if with_belady:
        arms.append(belady(codes, capacity, warm, write_mask if write_flags is not None else None))
    best = compare(arms)
    return SimReport(
        log.source, n, len(names), capacity, cache, budget, warmup, arms, best, int(write_mask.sum())
    )


def log_writes(log: Any) -> np.ndarray:
    """Which accesses of ``log`` write (their op is not a read), as a bool array."""
    from accesslog.log import READ_OPS

    ops = log.column("op")
    return ~np.isin(ops.astype(str), list(READ_OPS))


def add_plain_arm(report: SimReport, log: Any, policy: str) -> None:
    """Add a no-prefetch arm under another eviction policy (e.g. plain S3-FIFO beside prefetching
    arms on LRU), named ``none@POLICY``, and recompute the ratios and the best heuristic."""
    plain = simulate(
        log,
        report.cache,
        [],
        policies=[policy],
        budget=report.budget,
        warmup=report.warmup,
        with_belady=False,
        writes="drop" if report.writes or not log_writes(log).any() else "read",
    )
    arm = plain.arms[0]
    arm.arm = f"none@{policy}"
    report.arms.insert(1, arm)
    report.best_heuristic = compare(report.arms)


def format_table(report: SimReport) -> str:
    # (the reads after the warm-up: every arm scores the same ones)
    scored = report.arms[0].requests if report.arms else report.requests - report.writes
    head = (
        f"{report.trace}: {report.requests:,} requests ({scored:,} reads scored, "
        f"{report.writes:,} writes dropping their keys), {report.unique_keys:,} unique keys, cache {report.cache} = "
        f"{report.capacity:,} entries, budget {report.budget:g} prefetch/request, warm-up {report.warmup:.0%}; "
        f"best heuristic: {report.best_heuristic}"
    )
    cols = [
        "arm",
        "hit %",
        "miss %",
        "prefetches",
        "precision",
        "coverage",
        "upstream/req",
        "miss vs none",
        "miss vs best",
        "req/s",
    ]
    rows = []
    for a in report.arms:
        rows.append(
            [
                a.arm,
                f"{100 * a.hit_ratio:.2f}",
                f"{100 * a.miss_ratio:.2f}",
                f"{a.prefetches:,}",
                f"{a.precision:.3f}" if a.prefetches else "-",
                f"{a.coverage:+.3f}",
                f"{a.upstream_per_request:.3f}",
                f"{a.vs_none:.3f}",
                f"{a.vs_best:.3f}",
                f"{a.requests_per_s:,.0f}",
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
