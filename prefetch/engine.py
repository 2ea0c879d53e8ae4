"""The live prediction engine's logic, without I/O: reads in, prefetches out, per arm.

The proxy mirrors every GET and MGET key (stream, db, key, time, hit) to the engine in batches
(``proxy.prediction``); the engine runs in its own process (``prefetch.engine_process``) so that
its Python work never takes the proxy's event loop or GIL.

An experiment has one or more arms, each a predictor spec the simulator knows (``none``, a
heuristic, ``:param=value`` included). Reads are split among the arms by a stable, seeded hash of
the key (``ArmSplit``: CRC-32 seeded, not Python's per-process ``hash``), so a key always belongs to
the same arm, in every process and every run with the same seed. Every predictor observes the whole
access stream (its context) and predicts after every read, but prefetches only keys of its own
arm, spending a token bucket that gains ``budget`` tokens per read of its own keys, as the
simulator's replay does per read: no arm wins by reading more from upstream.

Records older than ``max_age`` seconds when the engine reaches them are still observed (the
heuristics are cheap) but not predicted from: their prefetches would come too late. They are
counted as shed.

One engine can serve several proxies (``predis serve --workers N``: one engine for every worker, see
``prefetch.engine_process``). Each proxy is a *peer*; its records come with their stream and db
moved into the peer's own range (``peer_stream``, ``peer_db``), so that two workers' clients are
two streams to the predictors, and each worker's tier has its own shadow and hints. The predictors
see every worker's reads (what one worker's clients teach serves every worker's); the figures are
kept per peer, so each worker's add up with the others' as its reads do.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from common.errors import ConfigError
from common.keyshape import fill, numbers_of, template_of
from prefetch.drift import DriftMonitor
from prefetch.predictors import make_predictor
from prefetch.predictors.base import NoPrefetch, Predictor

CANDIDATES = 4  # candidates asked of a predictor per read (as the simulator)
# Hints (see proxy.prediction): the keys the arms named after a read of a key, each arm's first
# few (the proxy checks each on every read of the key: kept short, it costs the request path little),
# for at most this many keys (the proxy keeps as many).
HINTS_PER_ARM = 2
HINT_SOURCES = 65_536
# A candidate becomes a hint only at this score or above: it will be fetched on later misses of
# the key, so it must be a plausible next read, not one guess among dozens (a random reader's
# successors churn the proxy's table with every read). (Chosen on web from single trial runs of
# 0.05 and 0.25, not kept as a benchmark: bench/HISTORY.md, "Hints and template rules".)
HINT_MIN_SCORE = 0.05
# Template rules (see proxy.prediction): an arm whose predictor names keys by their shape (the
# model: ``template_hints``) teaches the proxy "after a key of template T, the key of template U with
# the same numbers" once such a key it named was then read by the same client this many times, and
# at least RULE_PRECISION of the times it named one; at most this many U per T. (Counting names
# alone taught rules the model's copy head gets wrong: a product's number in a user key.)
RULE_SUPPORT = 3
RULE_PRECISION = 0.25
RULE_WINDOW = 8  # a named key counts as read when its client reads it within its next few reads
RULES_PER_TEMPLATE = 2
RULE_COUNTS = 16_384
RULES_MAX = 4_096  # rules taught in all (the proxy keeps them for its life: bounded here)
SPLIT_BUCKETS = 10_000
# A peer's records: its streams and dbs moved into its own range (peer 0's are unchanged).
PEER_STREAM_SHIFT = 40
PEER_DB_SHIFT = 32


def peer_stream(peer: int, stream: int) -> int:
    return stream | peer << PEER_STREAM_SHIFT


def peer_db(peer: int, db: int) -> int:
    return db | peer << PEER_DB_SHIFT


def peer_of_db(db: int) -> tuple[int, int]:
    """(peer, the peer's own db) of a db in a peer's range."""
    return db >> PEER_DB_SHIFT, db & ((1 << PEER_DB_SHIFT) - 1)


def peer_of_stream(stream: int) -> tuple[int, int]:
    return stream >> PEER_STREAM_SHIFT, stream & ((1 << PEER_STREAM_SHIFT) - 1)


# One mirrored read: (stream, db, key, time it was read, whether the tier served it).
Record = tuple[int, int, bytes, float, bool]
# One prefetch: (db, key, arm index, the time of the read it was predicted from, that read's stream).
Prefetch = tuple[int, bytes, int, float, int]


def parse_arms(text: str) -> list[tuple[str, str]]:
    """``A=SPEC,B=SPEC`` -> [(name, spec), ...]. A spec may hold ``:`` and ``=`` (its params)."""
    arms: list[tuple[str, str]] = []
    for part in text.split(","):
        name, sep, spec = part.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise ConfigError(f"A/B arm {part.strip()!r} is not of the form NAME=SPEC (as in A=markov,B=pg)")
        if name in (n for n, _ in arms):
            raise ConfigError(f"A/B arm {name!r} is named twice")
        arms.append((name, spec))
    if len(arms) < 2:
        raise ConfigError("an A/B test needs at least two arms (NAME=SPEC,NAME=SPEC)")
    return arms


def parse_shares(text: str, arms: int) -> list[float]:
    """``50,50`` -> fractions summing to 1, one per arm (empty text: equal shares)."""
    if not text.strip():
        return [1.0 / arms] * arms
    try:
        shares = [float(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"A/B shares {text!r} must be numbers, as in 50,50") from None
    if len(shares) != arms or any(s <= 0 for s in shares):
        raise ConfigError(f"A/B shares {text!r}: one positive share per arm ({arms} arms)")
    total = sum(shares)
    return [s / total for s in shares]


class ArmSplit:
    """Which arm a key belongs to: its seeded CRC-32 in ``SPLIT_BUCKETS`` buckets, cut by share."""

    def __init__(self, shares: Sequence[float], seed: int = 0) -> None:
        self.seed = seed & 0xFFFFFFFF
        self.bounds: list[int] = []
        edge = 0.0
        for share in shares:
            edge += share
            self.bounds.append(round(edge * SPLIT_BUCKETS))
        self.bounds[-1] = SPLIT_BUCKETS

    def arm_of(self, key: bytes) -> int:
        bucket = zlib.crc32(key, self.seed) % SPLIT_BUCKETS
        for arm, bound in enumerate(self.bounds):
            if bucket < bound:
                return arm
        return len(self.bounds) - 1  # (cannot happen: the last bound is SPLIT_BUCKETS)


class ArmFigures:
    """One arm's live figures, as the engine sees them."""

    __slots__ = ("gets", "hits", "prefetches", "shed", "predict_errors")

    def __init__(self) -> None:
        self.gets = 0
        self.hits = 0
        self.prefetches = 0
        self.shed = 0  # reads not predicted from: they reached the engine too late
        self.predict_errors = 0  # predictor calls that raised (the arm prefetched nothing for them)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__} | {"misses": self.gets - self.hits}


class Engine:
    """The arms' predictors, fed batches of records; returns the prefetches to issue."""

    def __init__(
        self,
        specs: Sequence[tuple[str, str]],
        shares: Sequence[float] | None = None,
        seed: int = 0,
        budget: float = 1.0,
        max_age: float = 0.05,
        shadow: int = 1_024,
        make: Callable[..., Predictor] = make_predictor,
        loader_defaults: dict[str, Any] | None = None,
        drift_window: int = 10_000,
        hints: bool = True,
        rules: bool = True,
    ) -> None:
        """``hints``, ``rules``: work out the hints and template rules the proxy applies (each off
        when the proxy is told not to apply them: ``prefetch_hints``, ``prefetch_rules``)."""
        if not specs:
            raise ConfigError("the engine needs at least one arm")
        self.names = [name for name, _ in specs]
        self.specs = [spec for _, spec in specs]
        # ConfigError names a bad spec; a model arm's loader takes ``loader_defaults`` (its device).
        self.predictors = [make(spec, loader_defaults=loader_defaults) for spec in self.specs]
        self.shares = list(shares or [1.0 / len(specs)] * len(specs))
        self.split = ArmSplit(self.shares, seed)
        self.budget = budget
        self.cap_tokens = max(2.0, 4 * budget)
        self.tokens = [0.0] * len(specs)
        self.max_age = max_age
        # Per peer, its arms' figures (peer 0's are ``figures``).
        self.figures = [ArmFigures() for _ in specs]
        self.peer_figures: dict[int, list[ArmFigures]] = {0: self.figures}
        # The shape of the traffic (issue 22's drift): template popularity, window against window.
        self.drift = DriftMonitor(drift_window)
        self.silent = [isinstance(p, NoPrefetch) for p in self.predictors]  # (never asked)
        # Predictors that work a batch at a time (the model: ``prepare`` steps it over the batch
        # before the reads are observed one by one; see ml.inference.live).
        self.preparers = [
            (a, p.prepare)
            for a, p in enumerate(self.predictors)
            if hasattr(p, "prepare") and not self.silent[a]
        ]
        # Per arm, a shadow of its part of the tier: an LRU of the (db, key)s it read or
        # prefetched, as many as the live tier's partition holds entries (``resize``, from the
        # proxy). A candidate in it is taken to be held and costs no token, as a candidate already
        # cached costs none in the simulator; the proxy checks the real tier before filling.
        self.shadows: list[OrderedDict[tuple[int, bytes], None]] = [OrderedDict() for _ in specs]
        self.shadow_sizes = [shadow] * len(specs)
        self.hints = hints
        self.hints_sent: OrderedDict[tuple[int, bytes], tuple[bytes, ...]] = OrderedDict()
        self.new_hints: list[tuple[int, bytes, tuple[bytes, ...]]] = []
        self.shaped = [rules and bool(getattr(p, "template_hints", False)) for p in self.predictors]
        self.rule_counts: OrderedDict[tuple[int, str, str], list[int]] = OrderedDict()  # [named, read]
        # Per client, the keys a shaped arm named after its last reads, with the rule they follow.
        self.pending: OrderedDict[int, deque[tuple[tuple[int, str, str], str]]] = OrderedDict()
        self.rules_taught: dict[tuple[int, str], list[str]] = {}
        self.new_rules: list[tuple[int, str, str]] = []
        self.rules_count = 0

    def resize(self, entries: Sequence[int], capacities: Sequence[float] | None = None) -> None:
        """The live tier's entries per arm: the shadows follow them (at least 16 each). And how many
        entries each arm's part holds when full (``capacities``, estimated by the proxy from its
        bytes and the mean entry's size): the size the model's gate is chosen for."""
        for arm, size in enumerate(entries[: len(self.shadows)]):
            self.shadow_sizes[arm] = max(16, int(size))
            shadow = self.shadows[arm]
            while len(shadow) > self.shadow_sizes[arm]:
                shadow.popitem(last=False)
            choose = getattr(self.predictors[arm], "choose", None)
            full = capacities[arm] if capacities is not None and arm < len(capacities) else 0
            if choose is not None and full > 0:
                # (the model's gate, floor and fallback for the cache size, as the simulator's arm:
                # its part of the tier holds its share of the keys, as a whole cache this many
                # times larger would hold them all)
                choose(full / self.shares[arm])

    def figures_of(self, peer: int) -> list[ArmFigures]:
        figures = self.peer_figures.get(peer)
        if figures is None:
            figures = self.peer_figures[peer] = [ArmFigures() for _ in self.names]
        return figures

    def forget(self, peer: int) -> None:
        """A peer gone: its figures go (peer 0's are kept, zeroed)."""
        if peer:
            self.peer_figures.pop(peer, None)

    def _hold(self, arm: int, db: int, key: bytes) -> None:
        shadow = self.shadows[arm]
        item = (db, key)
        if item in shadow:
            shadow.move_to_end(item)
        else:
            shadow[item] = None
            if len(shadow) > self.shadow_sizes[arm]:
                shadow.popitem(last=False)

    def step(self, records: Sequence[Record], now: float, observe_stale: bool = True) -> list[Prefetch]:
        """Observe ``records`` in order; return the prefetches their arms' predictors ask for.
        ``observe_stale`` False: records past ``max_age`` are counted (and shed) but not observed
        either, what an engine held to a share of a core does (``prefetch.cpubudget``): its
        predictors see less of the stream, and what it costs per read is no longer theirs."""
        if not observe_stale:
            records = self._shed_stale(records, now)
        out: list[Prefetch] = []
        predictors = self.predictors
        arm_of = self.split.arm_of
        budget, cap = self.budget, self.cap_tokens
        tokens = self.tokens
        shadows = self.shadows
        names = [r[2].decode("utf-8", "surrogateescape") for r in records]
        if self.preparers and budget:
            max_age = self.max_age
            batch = [
                (r[0], name, r[3], now - r[3] <= max_age) for r, name in zip(records, names, strict=True)
            ]
            for a, prepare in self.preparers:
                try:
                    prepare(batch)
                except Exception:  # (as predict's below: the arm prefetches nothing for the batch)
                    for r in records:
                        self.figures_of(r[0] >> PEER_STREAM_SHIFT)[a].predict_errors += 1
        observe_drift = self.drift.observe
        peer_figures = self.peer_figures
        max_age = self.max_age
        for (stream, db, key, t, hit), name in zip(records, names, strict=True):
            observe_drift(name)
            arm = arm_of(key)
            peer = stream >> PEER_STREAM_SHIFT
            mine = peer_figures.get(peer) or self.figures_of(peer)
            figures = mine[arm]
            figures.gets += 1
            if hit:
                figures.hits += 1
            for predictor in predictors:
                predictor.observe(name, t, hit, stream)
            if self.pending:
                self._confirm(stream, name)
            self._hold(arm, db, key)
            if not budget:
                continue
            if now - t > max_age:
                figures.shed += 1
                continue
            have = tokens[arm] + budget  # (tokens come with the reads of the arm's own keys)
            tokens[arm] = cap if have > cap else have
            # Every arm predicts after every read (each saw it) and names only its own keys: as
            # hints of this key (every time), and as prefetches while it has tokens.
            named: list[bytes] = []
            for a, predictor in enumerate(predictors):
                if self.silent[a]:
                    continue
                try:
                    candidates = predictor.predict(CANDIDATES)
                except Exception:  # a predictor must never stop the engine: the arm skips this read
                    mine[a].predict_errors += 1
                    continue
                shadow = shadows[a]
                have = tokens[a]
                own = 0
                for cand, score in candidates:
                    ckey = cand.encode("utf-8", "surrogateescape")
                    if arm_of(ckey) != a:
                        continue
                    own += 1
                    if own <= HINTS_PER_ARM and score >= HINT_MIN_SCORE:
                        named.append(ckey)
                    if have < 1.0 or (db, ckey) in shadow:
                        continue
                    self._hold(a, db, ckey)
                    out.append((db, ckey, a, t, stream))
                    mine[a].prefetches += 1
                    have -= 1.0
                tokens[a] = have
                if self.shaped[a]:
                    self._learn_rules(a, name, candidates, stream)
            if self.hints:
                self._hint(db, key, tuple(named))
        return out

    def _shed_stale(self, records: Sequence[Record], now: float) -> Sequence[Record]:
        """The records still fresh; the others are counted in their arms' figures (and shed)."""
        max_age = self.max_age
        fresh: list[Record] = []
        stale: list[Record] = []
        for record in records:
            (fresh if now - record[3] <= max_age else stale).append(record)
        if stale:
            self.shed(stale)
        return fresh

    def shed(self, records: Sequence[Record]) -> None:
        """Count ``records`` in their arms' figures (GETs, hits, shed) without observing them: what
        an engine past its share of a core does with the reads it has no time for."""
        arm_of = self.split.arm_of
        for stream, db, key, _, hit in records:
            arm = arm_of(key)
            peer = stream >> PEER_STREAM_SHIFT
            figures = (self.peer_figures.get(peer) or self.figures_of(peer))[arm]
            figures.gets += 1
            figures.hits += hit
            if self.budget:  # (as in step: an arm that never prefetches sheds nothing)
                figures.shed += 1
            self._hold(arm, db, key)  # (it is in the tier now, as after any read)

    def _hint(self, db: int, key: bytes, named: tuple[bytes, ...]) -> None:
        """Note what the arms named after a read of ``key``, to tell the proxy if it changed."""
        sent = self.hints_sent
        source = (db, key)
        before = sent.get(source)
        if before == named or (before is None and not named) or (before and set(before) == set(named)):
            if before is not None:
                sent.move_to_end(source)
            return
        sent[source] = named
        sent.move_to_end(source)
        if len(sent) > HINT_SOURCES:
            sent.popitem(last=False)
        self.new_hints.append((db, key, named))

    def _learn_rules(self, arm: int, name: str, candidates: Sequence[tuple[str, float]], stream: int) -> None:
        """Count the candidates that are ``name``'s numbers in another template, and wait for the
        client to read them (``_confirm``)."""
        numbers = numbers_of(name)
        if not numbers:
            return
        source = template_of(name)
        counts = self.rule_counts
        for cand, score in candidates:
            if score < HINT_MIN_SCORE or cand == name:
                continue
            target = template_of(cand)
            if target == cand or fill(target, numbers) != cand:
                continue
            pair = (arm, source, target)
            seen = counts.get(pair)
            if seen is None:
                seen = counts[pair] = [0, 0]
                if len(counts) > RULE_COUNTS:
                    counts.popitem(last=False)
            else:
                counts.move_to_end(pair)
            seen[0] += 1
            waiting = self.pending.get(stream)
            if waiting is None:
                waiting = self.pending[stream] = deque(maxlen=RULE_WINDOW)
                if len(self.pending) > HINT_SOURCES:
                    self.pending.popitem(last=False)
            waiting.append((pair, cand))

    def _confirm(self, stream: int, name: str) -> None:
        """A client's read: the rules whose named key it is are confirmed once more; one confirmed
        often enough, and often enough for the times it was named, is taught."""
        waiting = self.pending.get(stream)
        if not waiting:
            return
        for item in [item for item in waiting if item[1] == name]:
            waiting.remove(item)
            pair = item[0]
            seen = self.rule_counts.get(pair)
            if seen is None:
                continue
            seen[1] += 1
            if seen[1] < RULE_SUPPORT or seen[1] < RULE_PRECISION * seen[0] or self.rules_count >= RULES_MAX:
                continue
            arm, source, target = pair
            taught = self.rules_taught.setdefault((arm, source), [])
            if target not in taught and len(taught) < RULES_PER_TEMPLATE:
                self.rules_count += 1
                taught.append(target)
                self.new_rules.append(pair)

    def take_rules(self) -> list[tuple[int, str, str]]:
        """The template rules taught since the last call: (arm, source template, target template)."""
        rules, self.new_rules = self.new_rules, []
        return rules

    def take_hints(self) -> list[tuple[int, bytes, tuple[bytes, ...]]]:
        """The hints that changed since the last call: (db, key, keys the arms named after it)."""
        hints, self.new_hints = self.new_hints, []
        return hints

    def tick(self) -> bool:
        """Let the arms' predictors that keep time do it between batches (a model arm following
        its registry swaps a new model in); True when one changed what the report says."""
        changed = False
        for predictor in self.predictors:
            tick = getattr(predictor, "tick", None)
            if tick is not None:
                changed |= bool(tick())
        return changed

    def reset(self) -> None:
        """The experiment's figures start again, every peer's."""
        for figures in self.peer_figures.values():
            figures[:] = [ArmFigures() for _ in figures]
        self.drift.rebase()

    def report(self, peer: int = 0) -> dict[str, Any]:
        """The arms' figures for ``peer``'s reads, with what every peer shares (each arm's
        predictor's own figures, the drift)."""
        arms = []
        for name, spec, figures, predictor in zip(
            self.names, self.specs, self.figures_of(peer), self.predictors, strict=True
        ):
            arm: dict[str, Any] = {"name": name, "spec": spec, **figures.as_dict()}
            own = getattr(predictor, "figures", None)
            if own is not None:  # (the model's: loaded or not, its fallback, fallbacks by reason)
                arm["predictor"] = own()
            arms.append(arm)
        return {"arms": arms, "drift": self.drift.figures()}
