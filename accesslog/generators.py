"""Synthetic workloads, vectorized with numpy and deterministic for a seed.

Each generator is a function from (number of accesses, random generator, parameters) to a
:class:`Draft`: int codes into a list of key names, and optionally its own clock, operations and client
ids. :func:`generate` then applies the knobs every workload shares (random-access noise, read/write
mix, per-key value sizes, the arrival process) and returns an :class:`~accesslog.log.AccessLog`.

Ids inside key names are what an application would use (a user id, a product id, a sample index),
drawn without relation to popularity or to the order of first appearance.
"""

from __future__ import annotations

import dataclasses
import functools
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from accesslog.log import AccessLog, keys_from_codes, make_table
from common.errors import DataError

# Monday 2026-01-05 00:00 UTC: synthetic clocks start on a week's first midnight, so hour of day and
# day of week mean what they say.
START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()


def param(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass
class Common:
    """Knobs every workload shares."""

    rate: float = param(1000.0, "mean requests per second")
    burstiness: float = param(1.0, "coefficient of variation of inter-arrival times (1 = Poisson, >1 bursty)")
    noise: float = param(0.0, "share of accesses replaced by reads of random keys of the same key space")
    write_ratio: float = param(
        0.0, "share of accesses that are SETs (workloads with their own writes add these)"
    )
    value_size: int = param(512, "median value size in bytes (log-normal, fixed per key)")
    value_sigma: float = param(1.0, "sigma of the log value size (0: every value the same size)")
    start: float = param(START, "Unix time of the first access")

    def check(self) -> None:
        _positive("rate", self.rate)
        _positive("burstiness", self.burstiness)
        _share("noise", self.noise)
        _share("write_ratio", self.write_ratio)
        _positive("value_size", self.value_size)
        if self.value_sigma < 0:
            raise DataError("parameter value_sigma must be at least 0")


@dataclass
class Draft:
    codes: np.ndarray  # int64 codes into names, one per access
    names: list[str]
    ts: np.ndarray | None = None  # the workload's own clock, else the shared arrival process
    writes: np.ndarray | None = None  # bool per access, where the workload decides its own writes
    client: np.ndarray | None = None


@dataclass
class Generator:
    name: str
    params: type[Common]
    fn: Callable[[int, np.random.Generator, Any], Draft]
    doc: str


GENERATORS: dict[str, Generator] = {}


def generator(name: str, params: type[Common]) -> Callable[[Callable[..., Draft]], Callable[..., Draft]]:
    def register(fn: Callable[..., Draft]) -> Callable[..., Draft]:
        GENERATORS[name] = Generator(name, params, fn, (fn.__doc__ or "").strip())
        return fn

    return register


# --- shared helpers -----------------------------------------------------------------------------------


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise DataError(f"parameter {name} must be positive, not {value}")


def _share(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise DataError(f"parameter {name} must be between 0 and 1, not {value}")


@functools.lru_cache(maxsize=64)
def zipf_cdf(n: int, alpha: float) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def zipf_ranks(rng: np.random.Generator, size: int, n: int, alpha: float) -> np.ndarray:
    """Ranks 0..n-1 with P(rank r) proportional to (r+1)^-alpha (a bounded Zipf law)."""
    return np.searchsorted(zipf_cdf(n, alpha), rng.random(size), side="right").clip(0, n - 1)


def app_ids(rng: np.random.Generator, n: int, low: int) -> np.ndarray:
    """n distinct ids from [low, 10*low) in random order, as an application's id space would give."""
    span = max(10 * low, low + 2 * n) - low
    return rng.choice(span, size=n, replace=False) + low


def arrivals(rng: np.random.Generator, n: int, rate: float, cv: float, start: float) -> np.ndarray:
    """A renewal process with mean rate ``rate`` and inter-arrival coefficient of variation ``cv``.

    Gamma inter-arrival times: shape 1/cv^2 (cv 1 is Poisson; above 1 arrivals cluster into bursts).
    """
    shape = 1.0 / (cv * cv)
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n)
    return start + np.cumsum(gaps) - gaps[0]


class KeySpace:
    """Key names built from templates and ids; each distinct key is formatted once, not per access."""

    def __init__(self, templates: Sequence[Callable[[int], str]]) -> None:
        self.templates = list(templates)

    def encode(self, template: np.ndarray, ids: np.ndarray) -> Draft:
        span = int(ids.max()) + 1 if ids.size else 1
        combined = template.astype(np.int64) * span + ids.astype(np.int64)
        uniq, codes = np.unique(combined, return_inverse=True)
        names = [self.templates[int(u // span)](int(u % span)) for u in uniq]
        return Draft(codes.astype(np.int64), names)


def _within_group(groups: np.ndarray) -> np.ndarray:
    """Position of each element within its group, for elements sorted by group."""
    n = groups.size
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n) - np.repeat(starts, lengths)


def _grouped_cumsum(groups_sorted: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``values`` restarting at each group (both sorted by group)."""
    total = np.cumsum(values)
    starts = np.flatnonzero(np.r_[True, groups_sorted[1:] != groups_sorted[:-1]])
    lengths = np.diff(np.r_[starts, groups_sorted.size])
    offset = np.repeat(total[starts] - values[starts], lengths)
    return total - offset


# --- zipfian ----------------------------------------------------------------------------------------


@dataclass
class ZipfianParams(Common):
    keys: int = param(10_000, "number of distinct keys")
    alpha: float = param(1.0, "Zipf exponent of key popularity (0 = uniform)")
    prefix: str = param("object", "key name prefix: keys are PREFIX:ID")

    def check(self) -> None:
        super().check()
        _positive("keys", self.keys)
        if self.alpha < 0:
            raise DataError("parameter alpha must be at least 0")


@generator("zipfian", ZipfianParams)
def zipfian(n: int, rng: np.random.Generator, p: ZipfianParams) -> Draft:
    """Independent reads with Zipf popularity over a fixed key set: the textbook cache workload."""
    ids = app_ids(rng, p.keys, 100_000)
    names = [f"{p.prefix}:{i}" for i in ids]
    return Draft(zipf_ranks(rng, n, p.keys, p.alpha), names)


# --- temporal ---------------------------------------------------------------------------------------


@dataclass
class TemporalParams(Common):
    keys: int = param(10_000, "number of distinct keys")
    alpha: float = param(1.0, "Zipf exponent of key popularity")
    days: float = param(7.0, "days the trace spans (the arrival rate follows from n and days)")
    peak_ratio: float = param(4.0, "evening-peak request rate over the night rate, at seasonality 1")
    business_ratio: float = param(2.5, "business-hours (9-17) rate over the night rate, at seasonality 1")
    weekend: float = param(0.6, "a weekend day's volume relative to a weekday's")
    seasonality: float = param(1.0, "strength of the daily cycle: the hourly profile is raised to this power")
    shift: float = param(
        0.5, "how far the evening audience's favourite keys differ from the daytime one's (0-1)"
    )

    def check(self) -> None:
        super().check()
        _positive("keys", self.keys)
        _positive("days", self.days)
        _positive("weekend", self.weekend)
        _share("shift", self.shift)
        if not self.peak_ratio >= self.business_ratio >= 1:
            raise DataError("parameters must satisfy peak_ratio >= business_ratio >= 1")
        if self.seasonality < 0:
            raise DataError("parameter seasonality must be at least 0")

    def hourly(self) -> np.ndarray:
        """Relative request rate for each hour of the day (night = 1)."""
        b, k = self.business_ratio, self.peak_ratio
        h = np.ones(24)
        h[7:9] = (1 + b) / 2
        h[9:18] = b
        h[18] = (b + k) / 2
        h[19:23] = k
        h[23] = (k + 1) / 2
        return h**self.seasonality  # type: ignore[no-any-return]


@generator("temporal", TemporalParams)
def temporal(n: int, rng: np.random.Generator, p: TemporalParams) -> Draft:
    """Daily and weekly cycles: quiet nights, busy business hours, an evening peak, lighter weekends;
    the evening audience prefers different keys from the daytime one."""
    hours = int(np.ceil(p.days * 24))
    hour_of_week = np.arange(hours) % (24 * 7)
    weight = p.hourly()[hour_of_week % 24] * np.where(hour_of_week // 24 >= 5, p.weekend, 1.0)
    weight[-1] *= p.days * 24 - (hours - 1)  # a partial last hour
    cum = np.r_[0.0, np.cumsum(weight)]
    u = np.sort(rng.random(n)) * cum[-1]
    ts = p.start + np.interp(u, cum, np.arange(hours + 1) * 3600.0)
    # Evening (18-23) reads draw from a second popularity ranking, a partial reshuffle of the first.
    day_rank = rng.permutation(p.keys)
    evening_rank = day_rank.copy()
    moved = rng.random(p.keys) < p.shift
    evening_rank[moved] = rng.permutation(evening_rank[moved])
    ranks = zipf_ranks(rng, n, p.keys, p.alpha)
    hour = ((ts - p.start) // 3600).astype(np.int64) % 24
    codes = np.where(hour >= 18, evening_rank[ranks], day_rank[ranks])
    ids = app_ids(rng, p.keys, 100_000)
    return Draft(codes, [f"item:{i}" for i in ids], ts=ts)


# --- ml_training ------------------------------------------------------------------------------------


@dataclass
class MLTrainingParams(Common):
    samples: int = param(50_000, "samples in the dataset (one key each)")
    batch: int = param(64, "samples per batch")
    shuffle: str = param(
        "epoch", "epoch: a new order every epoch; fixed: one shuffled order reused; none: index order"
    )
    dataset: str = param("train", "dataset name, part of every key")
    step_time: float = param(0.05, "seconds of compute between batches")

    def check(self) -> None:
        super().check()
        _positive("samples", self.samples)
        _positive("batch", self.batch)
        if self.shuffle not in ("epoch", "fixed", "none"):
            raise DataError(f"parameter shuffle must be epoch, fixed or none, not {self.shuffle!r}")
        if self.step_time < 0:
            raise DataError("parameter step_time must be at least 0")


@generator("ml_training", MLTrainingParams)
def ml_training(n: int, rng: np.random.Generator, p: MLTrainingParams) -> Draft:
    """A training job's data loader: every epoch reads each sample once, batch by batch, in a
    shuffled order (new each epoch, or one fixed order), with compute time between batches."""
    epochs = -(-n // p.samples)
    fixed = rng.permutation(p.samples)
    if p.shuffle == "none":
        order = np.tile(np.arange(p.samples), epochs)
    elif p.shuffle == "fixed":
        order = np.tile(fixed, epochs)
    else:
        order = np.concatenate([rng.permutation(p.samples) for _ in range(epochs)])
    order = order[:n]
    i = np.arange(n)
    batch_no, within = i // p.batch, i % p.batch
    ts = p.start + batch_no * (p.batch / p.rate + p.step_time) + within / p.rate
    names = [f"ds:{p.dataset}:sample:{s}" for s in range(p.samples)]
    return Draft(order.astype(np.int64), names, ts=ts)


# --- hft --------------------------------------------------------------------------------------------


@dataclass
class HFTParams(Common):
    symbols: int = param(500, "instruments traded")
    alpha: float = param(1.2, "Zipf exponent of symbol popularity (a few hot symbols)")
    sectors: int = param(20, "sectors; a market event moves one symbol and its sector peers")
    event_rate: float = param(0.5, "market events per second")
    event_share: float = param(0.4, "share of reads made in event bursts")
    event_span: float = param(0.05, "mean seconds a burst read lags its event")
    correlation: float = param(
        0.6, "probability a burst read is of a sector peer rather than the event's symbol"
    )
    accounts: int = param(50, "trading accounts (position keys)")

    def check(self) -> None:
        super().check()
        for name in ("symbols", "sectors", "event_rate", "event_span", "accounts"):
            _positive(name, getattr(self, name))
        _share("event_share", self.event_share)
        _share("correlation", self.correlation)
        if self.sectors > self.symbols:
            raise DataError("parameter sectors must not exceed symbols")


def tickers(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list(string.ascii_uppercase))
    out: dict[str, None] = {}
    while len(out) < n:
        length = rng.integers(3, 5, size=n)
        raw = rng.integers(0, 26, size=(n, 4))
        for row, k in zip(raw, length, strict=True):
            out.setdefault("".join(letters[row[:k]]), None)
            if len(out) == n:
                break
    return list(out)


# Reads of one symbol lookup: the quote always, then the order book, recent trades, a position.
_HFT_TEMPLATES = ["quote:{}", "book:{}:L2", "trades:{}", "position:{}"]
_HFT_PROB = np.array([1.0, 0.7, 0.3, 0.1])


@generator("hft", HFTParams)
def hft(n: int, rng: np.random.Generator, p: HFTParams) -> Draft:
    """Market data reads: a few hot symbols, and bursts after market events that hit one symbol and,
    through sector correlation, its peers. Each lookup reads the quote and often the book and trades."""
    syms = tickers(rng, p.symbols)
    sector = rng.integers(0, p.sectors, size=p.symbols)
    by_sector = np.argsort(sector, kind="stable")
    sector_start = np.searchsorted(sector[by_sector], np.arange(p.sectors))
    sector_size = np.bincount(sector, minlength=p.sectors)
    groups = int(n / _HFT_PROB.sum() * 1.05) + 64
    bursty = rng.random(groups) < p.event_share
    duration = n / p.rate
    # Base lookups arrive as a Poisson stream over the whole span; burst lookups follow events.
    ts = np.sort(rng.random(groups)) * duration
    sym = zipf_ranks(rng, groups, p.symbols, p.alpha)
    events = max(1, int(duration * p.event_rate))
    event_t = rng.random(events) * duration
    event_sym = zipf_ranks(rng, events, p.symbols, p.alpha)
    nb = int(bursty.sum())
    ev = rng.integers(0, events, size=nb)
    ts[bursty] = event_t[ev] + rng.exponential(p.event_span, size=nb)
    peer = rng.random(nb) < p.correlation
    s_of_event = event_sym[ev]
    sec = sector[s_of_event]
    peer_pick = by_sector[sector_start[sec] + (rng.random(nb) * sector_size[sec]).astype(np.int64)]
    sym[bursty] = np.where(peer, peer_pick, s_of_event)
    order = np.argsort(ts, kind="stable")
    ts, sym = ts[order], sym[order]
    # Expand each lookup into its reads.
    present = rng.random((groups, len(_HFT_PROB))) < _HFT_PROB
    counts = present.sum(axis=1)
    template = np.nonzero(present)[1]
    g = np.repeat(np.arange(groups), counts)
    account = rng.integers(0, p.accounts, size=groups)
    ids = np.where(template == 3, account[g] * p.symbols + sym[g], sym[g])
    ks = KeySpace(
        [
            lambda i: f"quote:{syms[i]}",
            lambda i: f"book:{syms[i]}:L2",
            lambda i: f"trades:{syms[i]}",
            lambda i: f"position:{1000 + i // p.symbols}:{syms[i % p.symbols]}",
        ]
    )
    draft = ks.encode(template[:n], ids[:n])
    within = _within_group(g[:n])
    draft.ts = p.start + np.maximum.accumulate(ts[g[:n]]) + within * 20e-6
    return draft


# --- gaming -----------------------------------------------------------------------------------------


@dataclass
class GamingParams(Common):
    players: int = param(5_000, "players")
    player_alpha: float = param(0.8, "Zipf exponent of player activity")
    zones: int = param(50, "zones of the world, on a ring; players walk to adjacent zones")
    entities: int = param(200, "entities per zone, on a ring; a player sees those near its position")
    view: int = param(2, "a tick reads the entities within VIEW places of the player's position")
    move: float = param(0.05, "probability per tick of walking to an adjacent zone")
    inventory: float = param(0.1, "probability per tick of reading the player's inventory")
    state_writes: float = param(0.3, "probability per tick of writing the player's state")

    def check(self) -> None:
        super().check()
        for name in ("players", "zones", "entities"):
            _positive(name, getattr(self, name))
        for name in ("move", "inventory", "state_writes"):
            _share(name, getattr(self, name))
        if not self.view >= 0 and 2 * self.view + 1 <= self.entities:
            raise DataError("parameter view must be at least 0 and 2*view+1 at most entities")


@generator("gaming", GamingParams)
def gaming(n: int, rng: np.random.Generator, p: GamingParams) -> Draft:
    """Game servers' ticks: a player reads its own state, its zone's entity index and the entities
    near its position, sometimes its inventory, and writes its state; players wander between zones."""
    seen = 2 * p.view + 1
    per_tick = 2 + seen + p.inventory + p.state_writes
    ticks = int(n / per_tick * 1.05) + 64
    player = zipf_ranks(rng, ticks, p.players, p.player_alpha)
    # Walks per player: sort ticks by player, accumulate moves, restore time order.
    by_player = np.argsort(player, kind="stable")
    ps = player[by_player]
    step = rng.random(ticks)
    zone_move = np.where(step < p.move / 2, -1, np.where(step < p.move, 1, 0))
    pos_move = rng.integers(-1, 2, size=ticks)
    zone0 = rng.integers(0, p.zones, size=p.players)
    pos0 = rng.integers(0, p.entities, size=p.players)
    zone = np.empty(ticks, np.int64)
    pos = np.empty(ticks, np.int64)
    zone[by_player] = (zone0[ps] + _grouped_cumsum(ps, zone_move[by_player])) % p.zones
    pos[by_player] = (pos0[ps] + _grouped_cumsum(ps, pos_move[by_player])) % p.entities
    # Each tick's reads: state, zone index, seen entities, maybe inventory; then maybe a state write.
    slots = 3 + seen
    present = np.ones((ticks, slots), bool)
    present[:, 2 + seen] = rng.random(ticks) < p.inventory
    write_state = rng.random(ticks) < p.state_writes
    template = np.broadcast_to(np.r_[0, 1, np.full(seen, 2), 3], (ticks, slots))
    offsets = np.r_[0, 0, np.arange(-p.view, p.view + 1), 0]
    entity = p.entities * zone[:, None] + (pos[:, None] + offsets[None, :]) % p.entities
    ids = np.where(template == 1, zone[:, None], np.where(template == 2, entity, player[:, None]))
    # The state write goes last in its tick: append it as an extra column.
    present = np.c_[present, write_state]
    template = np.c_[template, np.zeros(ticks, np.int64)]
    ids = np.c_[ids, player]
    writes = np.zeros_like(present)
    writes[:, -1] = True
    t_idx = np.repeat(np.arange(ticks), present.sum(axis=1))[:n]
    player_ids = app_ids(rng, p.players, 10_000)
    entity_ids = app_ids(rng, p.zones * p.entities, 100_000)
    ks = KeySpace(
        [
            lambda i: f"player:{player_ids[i]}:state",
            lambda i: f"zone:{i}:entities",
            lambda i: f"entity:{entity_ids[i]}",
            lambda i: f"player:{player_ids[i]}:inventory",
        ]
    )
    draft = ks.encode(template[present][:n], ids[present][:n])
    draft.writes = writes[present][:n]
    tick_ts = arrivals(rng, ticks, p.rate / per_tick, p.burstiness, p.start)
    draft.ts = tick_ts[t_idx] + _within_group(t_idx) * 50e-6
    draft.client = player_ids[player[t_idx]]
    return draft


# --- web --------------------------------------------------------------------------------------------

PAGES = ["home", "category", "product", "search", "cart", "checkout"]
# Page-to-page transitions of a shop's visitors (rows: from; columns: to, in PAGES order).
TRANSITIONS = np.array(
    [
        [0.00, 0.50, 0.20, 0.25, 0.05, 0.00],
        [0.00, 0.15, 0.70, 0.10, 0.05, 0.00],
        [0.05, 0.20, 0.45, 0.10, 0.20, 0.00],
        [0.00, 0.10, 0.70, 0.20, 0.00, 0.00],
        [0.20, 0.00, 0.40, 0.00, 0.00, 0.40],
        [1.00, 0.00, 0.00, 0.00, 0.00, 0.00],
    ]
)
ENTRY = np.array([0.60, 0.00, 0.25, 0.15, 0.00, 0.00])
# Keys each page reads, in order; "W:" marks a write. u: user, c: category, p: product, q: query.
PAGE_KEYS: dict[str, list[str]] = {
    "home": ["user:{u}:profile", "user:{u}:cart", "page:home:featured"],
    "category": ["category:{c}", "category:{c}:products"],
    "product": ["product:{p}", "product:{p}:inventory", "product:{p}:reviews", "W:user:{u}:recent"],
    "search": ["search:{q}:results"],
    "cart": ["user:{u}:cart", "W:user:{u}:cart", "user:{u}:profile"],
    "checkout": ["user:{u}:profile", "user:{u}:addresses", "user:{u}:payment", "W:user:{u}:cart"],
}


@dataclass
class WebParams(Common):
    users: int = param(100_000, "registered users")
    user_alpha: float = param(0.8, "Zipf exponent of user activity")
    products: int = param(20_000, "products")
    product_alpha: float = param(1.0, "Zipf exponent of product popularity")
    categories: int = param(200, "product categories")
    queries: int = param(5_000, "distinct search queries (Zipf exponent 1)")
    related: int = param(5, "related products listed on a product page")
    relation: float = param(0.7, "probability the next product viewed is related to the current one")
    session_pages: float = param(8.0, "mean pages per session (geometric)")
    think_time: float = param(5.0, "mean seconds between a session's pages")

    def check(self) -> None:
        super().check()
        for name in ("users", "products", "categories", "queries", "related", "think_time"):
            _positive(name, getattr(self, name))
        _share("relation", self.relation)
        if self.session_pages < 1:
            raise DataError("parameter session_pages must be at least 1")
        if self.categories > self.products:
            raise DataError("parameter categories must not exceed products")


def _choose_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each row index, draw a column from that row of a stochastic matrix."""
    cdf = np.cumsum(probs, axis=1)
    return (rng.random(rows.size)[:, None] > cdf[rows]).sum(axis=1).clip(0, probs.shape[1] - 1)


@generator("web", WebParams)
def web(n: int, rng: np.random.Generator, p: WebParams) -> Draft:
    """Shoppers' sessions walking a site graph (home, category, product, search, cart, checkout);
    each page reads a fixed template of keys; products viewed in a row are often related."""
    keys_per_page = sum(len(v) for v in PAGE_KEYS.values()) / len(PAGE_KEYS)
    sessions = int(n / (p.session_pages * keys_per_page) * 1.3) + 16
    max_pages = int(p.session_pages * 12) + 2
    user = zipf_ranks(rng, sessions, p.users, p.user_alpha)
    # Longest sessions first, so the sessions still browsing at page s are a prefix of the arrays.
    length = -np.sort(-rng.geometric(1.0 / p.session_pages, size=sessions).clip(1, max_pages))
    max_pages = int(length[0])
    alive_at = np.searchsorted(-length, -np.arange(1, max_pages + 1), side="right")
    # Catalogue: products by popularity rank, each in a category, with a related-products list drawn
    # mostly from its own category.
    category_of = zipf_ranks(rng, p.products, p.categories, 0.8)
    by_cat = np.argsort(category_of, kind="stable")
    cat_start = np.searchsorted(category_of[by_cat], np.arange(p.categories))
    cat_size = np.bincount(category_of, minlength=p.categories).clip(1)

    def in_category(c: np.ndarray) -> np.ndarray:
        # Within a category, favour its popular products (lower ranks come first in by_cat).
        pick = (rng.random(c.size) ** 2 * cat_size[c]).astype(np.int64)
        return by_cat[np.minimum(cat_start[c] + pick, p.products - 1)]  # type: ignore[no-any-return]

    related = np.stack([in_category(category_of) for _ in range(p.related)], axis=1)
    related_weights = np.cumsum(0.5 ** np.arange(p.related))
    related_weights /= related_weights[-1]
    # Expansion of a page view into keys: a lookup table of (page, slot) -> template.
    templates: list[str] = []
    slot_of: list[list[int]] = []
    for name in PAGES:
        slot_of.append([])
        for t in PAGE_KEYS[name]:
            if t not in templates:
                templates.append(t)
            slot_of[-1].append(templates.index(t))
    table = np.full((len(PAGES), max(len(s) for s in slot_of)), -1)
    for i, slots in enumerate(slot_of):
        table[i, : len(slots)] = slots
    keys_of_page = (table >= 0).sum(axis=1)
    # Clock: sessions start as a Poisson stream (rate set so that keys arrive at p.rate); pages
    # follow at exponential think times.
    session_rate = p.rate / (length.mean() * keys_of_page.mean())
    clock = arrivals(rng, sessions, session_rate, p.burstiness, 0.0)[rng.permutation(sessions)]
    # Walk the sessions one page at a time, vectorized across the sessions still browsing; views
    # are collected step-major.
    views: list[tuple[np.ndarray, ...]] = []
    cur_page = _choose_rows(rng, ENTRY[None, :], np.zeros(sessions, np.int64))
    cur_prod = zipf_ranks(rng, sessions, p.products, p.product_alpha)
    cur_cat = category_of[cur_prod]
    for s in range(max_pages):
        k = int(alive_at[s])
        if s:
            prev_page = cur_page[:k]
            cur_prod, cur_cat = cur_prod[:k], cur_cat[:k]
            cur_page = _choose_rows(rng, TRANSITIONS, prev_page)
            follow = rng.random(k) < p.relation
            nth = np.searchsorted(related_weights, rng.random(k))
            nxt = np.where(
                follow,
                np.where(prev_page == 1, in_category(cur_cat), related[cur_prod, nth]),
                zipf_ranks(rng, k, p.products, p.product_alpha),
            )
            cur_prod = np.where(cur_page == 2, nxt, cur_prod)
            other_cat = zipf_ranks(rng, k, p.categories, 0.8)
            cur_cat = np.where(cur_page == 1, np.where(follow, category_of[cur_prod], other_cat), cur_cat)
            clock = clock[:k] + rng.exponential(p.think_time, size=k)
        sess = np.arange(k)
        views.append((sess, cur_page, cur_prod, cur_cat, zipf_ranks(rng, k, p.queries, 1.0), clock))
    v_sess, v_page, v_prod, v_cat, v_query, v_time = (np.concatenate(col) for col in zip(*views, strict=True))
    tmpl = table[v_page]  # (views, slots)
    present = tmpl >= 0
    view_of = np.repeat(np.arange(v_page.size), keys_of_page[v_page])
    tmpl_flat = tmpl[present]
    var = np.array([(t.split("{") + ["n"])[1][0] for t in templates])  # which id each template takes
    v = var[tmpl_flat]
    ids = np.select(
        [v == "u", v == "c", v == "p", v == "q"],
        [user[v_sess[view_of]], v_cat[view_of], v_prod[view_of], v_query[view_of]],
        0,
    )
    user_ids = app_ids(rng, p.users, 100_000)
    product_ids = app_ids(rng, p.products, 10_000)
    category_ids = app_ids(rng, p.categories, 100)
    lookup = {"u": user_ids, "c": category_ids, "p": product_ids, "q": np.arange(p.queries) + 1}

    def formatter(t: str) -> Callable[[int], str]:
        body = t.removeprefix("W:")
        if "{" not in body:
            return lambda i: body
        letter = body.split("{")[1][0]
        return lambda i: body.replace("{" + letter + "}", str(lookup[letter][i]))

    ts = v_time[view_of] + _within_group(view_of) * 0.5e-3
    order = np.argsort(ts, kind="stable")[:n]
    draft = KeySpace([formatter(t) for t in templates]).encode(tmpl_flat[order], ids[order])
    draft.ts = p.start + ts[order]
    draft.writes = np.array([t.startswith("W:") for t in templates])[tmpl_flat[order]]
    draft.client = v_sess[view_of[order]] + 1
    return draft


# --- driver -----------------------------------------------------------------------------------------


def parse_params(name: str, pairs: Sequence[str]) -> Common:
    """Parameters for generator ``name`` from ``k=v`` strings, typed by its parameter dataclass."""
    gen = get(name)
    known = {f.name: f for f in fields(gen.params)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise DataError(f"parameter {pair!r} is not of the form name=value")
        if key not in known:
            raise DataError(f"unknown parameter {key!r} for {name}; known: {', '.join(known)}")
        kind = known[key].type
        try:
            if kind in (int, "int"):
                values[key] = int(float(raw)) if float(raw).is_integer() else int(raw)
            elif kind in (float, "float"):
                values[key] = float(raw)
            else:
                values[key] = raw
        except ValueError:
            raise DataError(f"parameter {key} of {name} must be a number, not {raw!r}") from None
    params = gen.params(**values)
    params.check()
    return params


def get(name: str) -> Generator:
    gen = GENERATORS.get(name)
    if gen is None:
        raise DataError(f"unknown workload {name!r}; known: {', '.join(GENERATORS)}")
    return gen


def generate(name: str, n: int, seed: int = 0, params: Common | None = None) -> AccessLog:
    """Generate ``n`` accesses of workload ``name``; the same (name, n, seed, params) gives the same log."""
    gen = get(name)
    if n <= 0:
        raise DataError(f"the number of accesses must be positive, not {n}")
    p = params if params is not None else gen.params()
    p.check()
    rng = np.random.default_rng(seed)
    draft = gen.fn(n, rng, p)
    codes, names = draft.codes[:n], draft.names
    if codes.size < n:
        raise AssertionError(f"{name} produced {codes.size} accesses of {n}")
    noisy = rng.random(n) < p.noise
    if noisy.any():
        codes = codes.copy()
        codes[noisy] = rng.integers(0, len(names), size=int(noisy.sum()))
    writes = rng.random(n) < p.write_ratio
    if draft.writes is not None:
        writes |= draft.writes[:n] & ~noisy
    sizes_per_key = np.maximum(
        1, np.rint(p.value_size * np.exp(p.value_sigma * rng.standard_normal(len(names))))
    )
    if draft.ts is not None:
        # A workload's groups (a tick's reads, a page's keys) keep their order: a group that would
        # start before the previous one ended is pushed back to its end.
        ts = np.maximum.accumulate(draft.ts[:n])
    else:
        ts = arrivals(rng, n, p.rate, p.burstiness, p.start)
    op = keys_from_codes(writes.astype(np.int32), ["GET", "SET"])
    table = make_table(
        np.asarray(ts, np.float64),
        keys_from_codes(codes, names),
        op,
        sizes_per_key[codes].astype(np.int64),
        name,
        client=None if draft.client is None else draft.client[:n],
    )
    meta = {
        "source": name,
        "kind": "synthetic",
        "generator": name,
        "seed": seed,
        "requests": n,
        "params": dataclasses.asdict(p),
        "synthetic_clock": False,
    }
    return AccessLog(table, meta)


def describe(name: str) -> list[tuple[str, str, str]]:
    """(parameter, default, doc) rows for ``predis gen --list``."""
    gen = get(name)
    return [(f.name, repr(f.default), str(f.metadata.get("doc", ""))) for f in fields(gen.params)]
