"""A learned ranker over the heuristics' candidates (issue 21).

No single heuristic wins everywhere: OBL and Delta on sequential block runs, Mithril and Markov on repeated
associations, PG on file-system traces, and which one wins changes within a trace. The ranker runs
several of them (``sources``) on the same reads, takes the union of their candidates after every read
and scores each candidate with a small model trained on what it has seen: whether a candidate named
at a read was read within the next ``horizon`` reads. Features per candidate: each source's score for
it and its rank there (zero where the source did not name it), each naming source's recent precision
(the share of its top candidates read within the horizon, a moving average), how many sources named
it, how long ago and how often it was read, and the recent hit ratio of the reads. The best-scored
candidates at or above ``min_score`` are offered.

The model is a multilayer perceptron with one hidden layer (``hidden`` units), trained with Adam on
a window of the latest labelled candidates (``window``) every ``refit`` reads, warm-started
from its last weights: about 350 weights with the five default sources, scored in NumPy in
microseconds per read, no torch (the package never imports the model package, and the proxy's
engine runs it as it runs the other heuristics). A gradient-boosted model might rank as well on
such features (not tried), but a call per read costs more in Python than one small matrix product,
and continuing its training on a sliding window is less simple than a few more Adam steps. Before
its first fit the ranker offers the candidates by their best source score weighted by that
source's precision. ``sample``: every read's candidates are training examples (1), or every n-th
read's (2 cost a point of hit ratio on cloudPhysicsIO for a tenth of the time). ``freeze_after``:
stop training after that many reads (the "train on the first part, then freeze" baseline); 0 keeps
learning while replaying.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

# Delta runs here without its accuracy gate (the gate keeps it from prefetching on its own where
# strides mean nothing; the ranker learns a source's worth itself: with the gate, cloudPhysicsIO lost
# 3-4 points) and offers its two most frequent strides, not 16: with more, the ranker, whose label
# is "read within the horizon", put later blocks of a run before the next one (P6's first 1M reads
# at 1%: 96.38 with 16, 97.05 with 2, against delta alone 97.17; cloudPhysicsIO 1% 68.16 -> 67.23).
DEFAULT_SOURCES = "obl+markov+pg+mithril+delta:min_accuracy=0:depth=2"
MIN_EXAMPLES = 1_000  # labelled candidates before the first fit
_SCORE = itemgetter(1)
_flatten = chain.from_iterable


class TinyMLP:
    """One hidden layer of ReLU units and a sigmoid output, trained by Adam on log loss; inputs are
    standardized with the mean and spread of the data of the last fit."""

    def __init__(self, inputs: int, hidden: int, lr: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.params = [
            self.rng.normal(0.0, 1.0 / math.sqrt(inputs), (inputs, hidden)),
            np.zeros(hidden),
            self.rng.normal(0.0, 1.0 / math.sqrt(hidden), (hidden, 1)),
            np.zeros(1),
        ]
        self.moments = [(np.zeros_like(p), np.zeros_like(p)) for p in self.params]
        self.steps = 0
        self.lr = lr
        self.mean = np.zeros(inputs)
        self.scale = np.ones(inputs)
        self.fitted = False

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Log-odds for the rows of ``x`` (the standardization folded into the first layer at the
        fit: four array operations a call)."""
        h = x @ self.w1
        h += self.b1
        np.maximum(h, 0.0, out=h)
        return h @ self.w2 + self.b2  # type: ignore[no-any-return]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for the rows of ``x``."""
        return np.tanh(self.logits(x) * 0.5) * 0.5 + 0.5  # type: ignore[no-any-return]

    def _fold(self) -> None:
        w1, b1, w2, b2 = self.params
        self.w1 = w1 / self.scale[:, None]
        self.b1 = b1 - (self.mean / self.scale) @ w1
        self.w2, self.b2 = w2[:, 0], float(b2[0])

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, batch: int = 256) -> float:
        """Minibatch Adam over (x, y) from the current weights; returns the last epoch's mean loss."""
        self.mean = x.mean(0)
        self.scale = x.std(0) + 1e-6
        xs = (x - self.mean) / self.scale
        n = len(xs)
        loss = 0.0
        for _ in range(epochs):
            order = self.rng.permutation(n)
            total = 0.0
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                total += self._step(xs[idx], y[idx]) * len(idx)
            loss = total / max(1, n)
        self._fold()
        self.fitted = True
        return loss

    def _step(self, x: np.ndarray, y: np.ndarray) -> float:
        w1, b1, w2, b2 = self.params
        pre = x @ w1 + b1
        h = np.maximum(pre, 0.0)
        z = (h @ w2 + b2)[:, 0]
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
        eps = 1e-7
        loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
        dz = ((p - y) / len(y))[:, None]  # (n, 1)
        dh = (dz @ w2.T) * (pre > 0)
        grads = [x.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
        self.steps += 1
        b1m, b2m = 0.9, 0.999
        for p_, g, (m, v) in zip(self.params, grads, self.moments, strict=True):
            m *= b1m
            m += (1 - b1m) * g
            v *= b2m
            v += (1 - b2m) * g * g
            mhat = m / (1 - b1m**self.steps)
            vhat = v / (1 - b2m**self.steps)
            p_ -= self.lr * mhat / (np.sqrt(vhat) + 1e-8)
        return loss


class _Pending:
    """What the reads of the last ``horizon`` named, waiting to be read: per read, its expiry and
    each named key's payloads. ``read(key, t)`` takes ``key``'s payloads from every read still
    live; ``expire(t)`` takes those of the reads whose time ran out (unread). One dict per read,
    so a read costs a lookup per live read, not a structure per candidate."""

    def __init__(self) -> None:
        self.reads: deque[tuple[int, dict[str, list[Any]]]] = deque()

    def add(self, expires: int, named: dict[str, list[Any]]) -> None:
        self.reads.append((expires, named))

    def read(self, key: str, t: int) -> list[Any]:
        out: list[Any] = []
        for expires, named in self.reads:
            if expires >= t:
                got = named.pop(key, None)
                if got:
                    out += got
        return out

    def expire(self, t: int) -> list[Any]:
        out: list[Any] = []
        reads = self.reads
        while reads and reads[0][0] < t:
            for got in reads.popleft()[1].values():
                out += got
        return out

    def __len__(self) -> int:
        return sum(len(named) for _, named in self.reads)


class Ranker:
    name = "rank"
    # The parameter make_predictor fills with the predictors its value names ("obl+markov"; the
    # registry builds them, so this module needs no import of it).
    composes = ("sources", DEFAULT_SOURCES)

    def __init__(
        self,
        sources: Sequence[Any],
        per_source: int = 4,
        horizon: int = 16,
        hidden: int = 16,
        refit: int = 5_000,
        window: int = 40_000,
        epochs: int = 1,
        lr: float = 0.01,
        freeze_after: int = 0,
        min_score: float = 0.05,
        max_keys: int = 65_536,
        sample: int = 1,
        seed: int = 0,
    ) -> None:
        if not sources:
            raise ValueError("rank needs sources named as NAME+NAME (heuristics)")
        if min(per_source, horizon, hidden, refit, window, epochs, sample) < 1:
            raise ValueError("rank needs per_source, horizon, hidden, refit, window, epochs and sample >= 1")
        self.sample = sample
        self.sources = list(sources)
        self.per_source, self.horizon = per_source, horizon
        self.refit, self.window, self.epochs = refit, window, epochs
        self.freeze_after, self.min_score = freeze_after, min_score
        # The floor as log-odds (scores are compared before the sigmoid; it keeps their order).
        self.min_logit = (
            math.log(min_score / (1.0 - min_score))
            if 0.0 < min_score < 1.0
            else (-math.inf if min_score <= 0.0 else math.inf)
        )
        self.max_keys = max_keys
        s = len(self.sources)
        self.n_features = 3 * s + 5
        # A candidate's row before its sources fill it (scores, inverse ranks, precisions, share),
        # what one naming source adds to the share, and the inverse of each rank.
        self._blank = [0.0] * (3 * s + 1)
        self._share = 1.0 / s
        self._inverse = [1.0 / (r + 1) for r in range(per_source)]
        self.model = TinyMLP(self.n_features, hidden, lr, seed)
        self.precision = [0.5] * s  # each source's recent precision (moving average)
        self.hit_rate = 0.5
        self.t = 0
        self.key: str | None = None
        self.seen: OrderedDict[str, list[int]] = OrderedDict()  # key -> [last read, reads]
        self.pending = _Pending()
        # The latest labelled candidates, feature rows with their label last: a ring of ``window``
        # rows, filled at each fit from the rows labelled since (``fresh``).
        self.fresh: list[list[float]] = []
        self.ring = np.zeros((window, self.n_features + 1))
        self.filled = 0
        self.fits = 0
        self.max_footprint = (
            sum(int(getattr(p, "max_footprint", 0)) for p in self.sources)
            + max_keys
            + window
            + 2 * horizon * (s * per_source + s)
        )

    def choose(self, capacity: float) -> None:
        for p in self.sources:
            choose = getattr(p, "choose", None)
            if choose is not None:
                choose(capacity)

    # --- learning -------------------------------------------------------------------------------

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.t += 1
        now = self.t
        frozen = self.frozen
        precision, fresh = self.precision, self.fresh
        # Labels: a source index (its top candidate's outcome) moves that source's precision; an
        # example's feature row goes to the training window with its label, unless frozen.
        for right, payloads in (
            (0.0, self.pending.expire(now)),  # (first: what read() leaves is live)
            (1.0, self.pending.read(key, now)),
        ):
            for payload in payloads:
                if type(payload) is int:
                    precision[payload] += 0.02 * (right - precision[payload])
                elif not frozen:
                    payload.append(right)
                    fresh.append(payload)
        for p in self.sources:
            p.observe(key, t, hit, client)
        self.hit_rate += 0.01 * (float(hit) - self.hit_rate)
        entry = self.seen.get(key)
        if entry is None:
            if len(self.seen) >= self.max_keys:
                self.seen.popitem(last=False)
            self.seen[key] = [now, 1]
        else:
            entry[0] = now
            entry[1] += 1
            self.seen.move_to_end(key)
        self.key = key
        if now % self.refit == 0 and not self.frozen:
            self._fit()

    def _fit(self) -> None:
        fresh, self.fresh = self.fresh[-self.window :], []
        width = self.n_features + 1
        rows = np.fromiter(_flatten(fresh), float, len(fresh) * width).reshape(len(fresh), width)
        at = self.filled % self.window
        first = min(len(rows), self.window - at)
        self.ring[at : at + first] = rows[:first]
        self.ring[: len(rows) - first] = rows[first:]
        self.filled += len(rows)
        n = min(self.filled, self.window)
        if n >= min(MIN_EXAMPLES, self.window):
            data = self.ring[:n]
            self.model.fit(data[:, :-1], data[:, -1], self.epochs)
            self.fits += 1

    @property
    def frozen(self) -> bool:
        return bool(self.freeze_after) and self.t > self.freeze_after

    # --- ranking --------------------------------------------------------------------------------

    def predict(self, k: int) -> list[tuple[str, float]]:
        s = len(self.sources)
        named: dict[str, list[float]] = {}
        expires = self.t + self.horizon
        pending = self.pending
        precision = self.precision
        waiting: dict[str, list[Any]] = {}  # key -> what waits on its read: rows, sources' tops
        blank, share, inverse = self._blank, self._share, self._inverse
        for i, p in enumerate(self.sources):
            found = p.predict(self.per_source)
            at_rank, at_precision, own = s + i, 2 * s + i, precision[i]
            for r, (cand, score) in enumerate(found):
                row = named.get(cand)
                if row is None:
                    row = named[cand] = blank[:]
                row[i] = score
                row[at_rank] = inverse[r]
                row[at_precision] = own
                row[-1] += share  # (the share of the sources that named it)
            if found:
                top = found[0][0]
                payloads = waiting.get(top)
                if payloads is None:
                    waiting[top] = [i]
                else:
                    payloads.append(i)
        if self.key is not None:
            named.pop(self.key, None)  # (the key just read is held already)
        if not named:
            if waiting:
                pending.add(expires, waiting)
            return []
        now, seen, hit_rate = self.t, self.seen, self.hit_rate
        keys = list(named)
        rows = []
        log1p = math.log1p
        for cand in keys:
            row = named[cand]
            entry = seen.get(cand)
            if entry is None:
                row += (0.0, 0.0, 0.0, hit_rate)
            else:
                row += (1.0, log1p(now - entry[0]), log1p(entry[1]), hit_rate)
            rows.append(row)
        if now % self.sample == 0 and not self.frozen:  # (the reads whose candidates are examples)
            for cand, row in zip(keys, rows, strict=True):  # (labelled when read, or unread at expiry)
                payloads = waiting.get(cand)
                if payloads is None:
                    waiting[cand] = [row]
                else:
                    payloads.append(row)
        if waiting:
            pending.add(expires, waiting)
        if self.model.fitted:  # (log-odds against the floor's; a probability only for what is offered)
            width = len(rows[0])
            x = np.fromiter(_flatten(rows), float, len(rows) * width).reshape(len(rows), width)
            logits = self.model.logits(x).tolist()
            ranked = sorted(zip(keys, logits, strict=True), key=_SCORE, reverse=True)[:k]
            floor = self.min_logit
            exp = math.exp
            return [(c, 1.0 / (1.0 + exp(-z)) if z > -700.0 else 0.0) for c, z in ranked if z >= floor]
        # Before the first fit: the best source score weighted by that source's precision.
        scores = [max(row[i] * precision[i] for i in range(s)) for row in rows]
        ranked = sorted(zip(keys, scores, strict=True), key=_SCORE, reverse=True)[:k]
        return [(c, min(1.0, max(0.0, sc))) for c, sc in ranked if sc >= self.min_score]

    def footprint(self) -> int:
        return (
            sum(int(p.footprint()) for p in self.sources)
            + len(self.seen)
            + min(self.filled, self.window)
            + len(self.fresh)
            + len(self.pending)
        )
