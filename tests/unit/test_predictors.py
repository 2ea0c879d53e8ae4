"""Prefetch predictors: one shared suite over every heuristic, then a hand-built trace for each."""

from __future__ import annotations

import random

import pytest

from common.errors import ConfigError
from prefetch.predictors import HEURISTICS, make_predictor, parse_spec
from prefetch.predictors.base import Predictor
from prefetch.predictors.mithril import Mithril
from prefetch.predictors.obl import OBL, join_number, split_number
from prefetch.predictors.oracle import Oracle
from prefetch.predictors.ranker import Ranker

# Small tables, so that a modest stream overflows every bound.
SMALL = {
    "none": "none",
    "frequency": "frequency:hot=8:max_keys=64",
    "obl": "obl",
    "delta": "delta:window=32:depth=4:refresh=4:max_clients=3:min_accuracy=0",
    "markov": "markov:max_keys=50:max_successors=3",
    "pg": "pg:lookahead=5:max_nodes=40:max_arcs=4",
    "mithril": "mithril:mining_size=16:recording_size=30:max_entries=20",
    "rank": "rank:sources=obl+markov+pg:refit=500:window=1000:max_keys=64",
}


@pytest.fixture(params=sorted(HEURISTICS))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def spec(name: str) -> str:
    return SMALL[name]


def small(name: str) -> Predictor:
    """``name`` with small tables. The ranker's spec cannot size its sources (their parameters
    would be read as its own), so it is built over small ones here: with the default sources its
    tables never filled, and counting them after every read took 16 s of the test."""
    if name == "rank":  # (SMALL's rank spec, its sources taken small too)
        _, params = parse_spec(SMALL["rank"])
        sources = [make_predictor(SMALL[s]) for s in str(params.pop("sources")).split("+")]
        return Ranker(sources, **params)
    return make_predictor(SMALL[name])


def stream(n: int = 20_000, seed: int = 0) -> list[str]:
    """Mixed traffic: sequential runs, repeated pairs, hot keys and random keys."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.3:
            start = rng.randrange(1000)
            out += [f"blk:{i}" for i in range(start, start + 8)]
        elif kind < 0.6:
            a = rng.randrange(300)
            out += [f"user:{a}:profile", f"user:{a}:cart"]
        elif kind < 0.8:
            out.append(f"hot:{rng.randrange(5)}")
        else:
            out.append(f"rand:{rng.randrange(100_000)}")
    return out[:n]


def test_contract_holds_over_a_long_stream(name: str) -> None:
    p = small(name)
    rng = random.Random(1)
    for i, key in enumerate(stream()):
        p.observe(key, float(i), rng.random() < 0.5)
        for k in (1, 3):
            out = p.predict(k)
            assert len(out) <= k
            keys = [key for key, _ in out]
            assert len(set(keys)) == len(keys) and all(isinstance(x, str) for x in keys)
            scores = [s for _, s in out]
            assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)
        assert p.footprint() <= p.max_footprint


def test_deterministic(spec: str) -> None:
    runs = []
    for _ in range(2):
        p = make_predictor(spec)
        seen = []
        for i, key in enumerate(stream(3000, seed=2)):
            p.observe(key, float(i), i % 3 == 0)
            seen.append(tuple(p.predict(2)))
        runs.append(seen)
    assert runs[0] == runs[1]


def test_predict_before_any_read_is_empty(spec: str) -> None:
    assert make_predictor(spec).predict(4) == []


def feed(p: Predictor, keys: list[str], hit: bool = False) -> None:
    for i, key in enumerate(keys):
        p.observe(key, float(i), hit)


def test_none_never_predicts() -> None:
    p = make_predictor("none")
    feed(p, ["1", "2", "3", "4", "5", "6", "a", "b", "a", "b"])
    assert p.predict(4) == [] and p.footprint() == 0


def test_frequency_names_the_hot_set_first() -> None:
    p = make_predictor("frequency:hot=3:reorder=1")
    feed(p, ["a", "b", "hot", "c", "hot", "b", "hot", "hot", "c", "c", "b", "b", "b"])
    assert p.predict(2) == [("b", 1.0), ("hot", 0.8)]
    # The rotation walks on through the hot set, then starts again at the top.
    assert p.predict(2) == [("c", 0.6)]
    assert p.predict(1)[0][0] == "b"


def test_obl_fetches_the_next_number_after_a_sequential_run() -> None:
    p = OBL(k=4)
    feed(p, ["7", "8", "9", "10"])
    assert p.predict(1) == [], "three steps are not yet four"
    feed(p, ["11"])
    assert p.predict(1) == [("12", 1.0)]
    feed(p, ["13"])  # a gap breaks the run
    assert p.predict(1) == []
    q = OBL(k=2, depth=2)
    feed(q, ["blk:0007", "blk:0008", "blk:0009"])
    assert q.predict(4) == [("blk:0010", 1.0), ("blk:0011", 1.0)]
    feed(q, ["user:alice"])
    assert q.predict(1) == []


def test_delta_names_the_most_common_strides_from_the_last_read() -> None:
    p = make_predictor("delta:window=8:depth=3:refresh=1:min_accuracy=0")
    # Requests of 128 blocks, now and then one of 136: every next block is 128 or 136 on.
    feed(p, [str(n) for n in (1000, 1128, 1256, 1392, 1520, 1648)])
    assert p.predict(3) == [("1776", 0.8), ("1784", 0.2)]
    assert p.predict(1) == [("1776", 0.8)]
    # The window forgets: eight strides of 8 later, 128 is gone.
    feed(p, [str(1648 + 8 * i) for i in range(1, 9)])
    assert p.predict(3) == [("1720", 1.0)]
    # Keys of another template (or none) neither add a stride nor get one; the number is kept.
    feed(p, ["user:alice", "row:0007:v"])
    assert p.predict(2) == [("row:0015:v", 1.0)]
    # A stride never leads below zero.
    q = make_predictor("delta:refresh=1:min_accuracy=0")
    feed(q, ["9", "5"])
    assert q.predict(2) == [("1", 1.0)]
    feed(q, ["3"])  # (-4 and -2, once each: 3 - 4 is skipped)
    assert q.predict(2) == [("1", 0.5)]


def test_delta_follows_each_client_and_ranks_only_every_refresh() -> None:
    p = make_predictor("delta:refresh=4:min_accuracy=0")
    # Two clients interleaved, each striding by its own step: strides are taken within a client.
    for i in range(4):
        p.observe(str(100 + 2 * i), float(i), False, client=1)
        p.observe(str(900 + 10 * i), float(i), False, client=2)
    assert p.top == [(2, 0.5), (10, 0.5)]  # (not the -800s and +800s between the clients' reads)
    assert p.predict(2) == [("932", 0.5), ("940", 0.5)]
    # Client 0 now: its first read has no stride; then 10, 10, 10 (refresh 4: the ranking moves on
    # the fourth read only).
    feed(p, ["950", "960", "970"])
    assert p.top == [(2, 0.5), (10, 0.5)] and p.predict(1) == [("972", 0.5)]
    feed(p, ["980"])
    assert p.top == [(10, pytest.approx(6 / 9)), (2, pytest.approx(3 / 9))]


def test_delta_stays_silent_until_its_strides_have_been_right() -> None:
    rng = random.Random(3)
    # Ids at random (web sessions, game entities): strides mean nothing, and it never prefetches.
    p = make_predictor("delta")
    for i in range(3000):
        p.observe(f"entity:{rng.randrange(10**6)}", float(i), False)
        assert p.predict(4) == []
    # A steady stride of 8: it starts once enough of the reads followed a ranked stride, and stops
    # again when the reads turn random.
    q = make_predictor("delta")
    feed(q, [str(8 * i) for i in range(200)])
    assert q.predict(1) == [("1600", 1.0)]
    for i in range(300):
        q.observe(str(rng.randrange(10**6)), float(i), False)
    assert q.predict(1) == []


def test_obl_key_split() -> None:
    assert split_number("row:9:v") == ("row:", 9, ":v", 0)
    assert join_number(*split_number("blk:0099")[:1], 100, "", 4) == "blk:0100"  # type: ignore[misc]
    assert split_number("nodigits") is None


def test_markov_ranks_successors_by_count() -> None:
    p = make_predictor("markov")
    feed(p, ["a", "b", "a", "b", "a", "c", "a"])
    assert p.predict(3) == [("b", 2 / 3), ("c", 1 / 3)]
    q = make_predictor("markov:max_successors=2")
    feed(q, ["a", "b", "a", "c", "a", "c", "a", "d", "a"])  # d replaces the weakest (b)
    assert [k for k, _ in q.predict(3)] == ["c", "d"]


def test_pg_predicts_what_follows_within_the_window() -> None:
    p = make_predictor("pg:lookahead=2:threshold=0.5")
    # "b" comes within two reads after "a" every time; x, y, z once each.
    feed(p, ["a", "x", "b", "a", "y", "b", "a", "z", "b", "q", "q", "a"])
    out = p.predict(3)
    assert out[0] == ("b", 1.0)
    assert all(k == "b" for k, _ in out), "one-off successors stay under the threshold"


def test_pg_bounds_a_nodes_arcs_keeping_the_strongest_first_seen() -> None:
    p = make_predictor("pg:lookahead=1:threshold=0.01:max_arcs=2")
    # a's windows: b three times, then c, d, e, f once each. The fifth arc passes 2 * max_arcs,
    # so a keeps its two strongest: b, and of the ties the first seen (c), not the newest.
    feed(p, ["a", "b", "a", "b", "a", "b", "a", "c", "a", "d", "a", "e", "a", "f", "a"])
    assert p.predict(4) == [("b", 3 / 7), ("c", 1 / 7)]


def test_mithril_mines_sporadic_pairs_and_drops_frequent_keys() -> None:
    p = Mithril(lookahead=3, min_support=2, max_support=3, mining_size=4)
    keys = ["p1", "q1", "n1", "n2", "p2", "q2", "n3", "n4", "p1", "q1", "n5", "n6", "p2", "q2"]
    keys += ["f", "f", "f", "f"]  # frequent: reaches max_support and leaves the mining table
    feed(p, keys)
    assert p.minings >= 1
    p.observe("p1", 0.0, False)
    assert p.predict(2) == [("q1", 1.0)]
    p.observe("p2", 0.0, False)
    assert ("q2", 1.0) in p.predict(2)
    p.observe("f", 0.0, False)
    assert p.predict(2) == []
    # Hits are not recorded (misses only, by default): the same trace as hits teaches nothing.
    r = Mithril(lookahead=3, min_support=2, max_support=3, mining_size=4)
    feed(r, keys, hit=True)
    r.observe("p1", 0.0, True)
    assert r.predict(2) == [] and r.minings == 0


def test_mithril_keeps_the_nearest_follower_not_the_farthest() -> None:
    """A run b0..b9 read twice: every later block of the run is a candidate for b3 (within the
    lookahead), but only the nearest (b4, read right after it) joins its list, as in libCacheSim.
    Associating every candidate kept the last two added, the farthest (b7, b8): a reader of b3
    would then miss b4, b5 and b6."""
    run = [f"b{i}" for i in range(10)]
    keys = run + [f"x{i}" for i in range(3)] + run
    p = Mithril(lookahead=5, min_support=2, max_support=4, mining_size=10)
    feed(p, keys)
    assert p.minings == 1
    p.observe("b3", 0.0, True)
    assert p.predict(2) == [("b4", 1.0)]


def test_mithril_sizes_its_tables_for_the_cache() -> None:
    p = Mithril()
    small = p.max_footprint
    p.choose(38_688)  # P6 at 5%
    assert (p.recording_size, p.max_entries) == (6 * 38_688, 15 * 38_688)
    assert p.max_footprint > small
    p.choose(100)  # a small cache keeps the defaults
    assert (p.recording_size, p.max_entries) == (100_000, 100_000) and p.max_footprint == small
    q = Mithril(recording_size=30, max_entries=20, mining_size=16)
    feed(q, stream(5_000))
    q.choose(1_000_000)  # sizes a spec names are kept
    assert (q.recording_size, q.max_entries) == (30, 20) and q.footprint() <= q.max_footprint


def test_oracle_reads_ahead() -> None:
    keys = ["a", "b", "b", "c", "d"]
    p = Oracle(keys, window=3)
    p.observe("a", 0.0, False)
    assert [k for k, _ in p.predict(4)] == ["b", "c"]


def test_oracle_of_one_client_names_only_that_clients_next_reads() -> None:
    # Two clients interleaved: after a read of client 1, the bound names client 1's next reads,
    # skipping client 2's, and nothing past the end of client 1's stream.
    keys = ["a1", "x2", "b1", "y2", "c1", "z2"]
    clients = [1, 2, 1, 2, 1, 2]
    p = Oracle(keys, window=8, own_client=1, clients=clients)
    p.observe("a1", 0.0, False, 1)
    assert p.predict(8) == [("b1", 1.0), ("c1", 0.5)]
    p.observe("x2", 0.0, False, 2)
    assert [k for k, _ in p.predict(8)] == ["y2", "z2"]
    for key in keys[2:5]:
        p.observe(key, 0.0, False)
    assert p.predict(8) == []  # (client 1's last read: it reads nothing after it)
    with pytest.raises(ValueError, match="own_client needs"):
        Oracle(keys, own_client=1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown prefetcher 'nope'"),
        ("oracle:own_client=1", "needs the trace"),
        ("pg:bogus=1", "has no parameter 'bogus'"),
        ("pg:lookahead", "not of the form name=value"),
        ("obl:k=0", "k >= 1"),
        ("delta:window=0", "window, depth"),
        ("delta:min_accuracy=2", "min_accuracy <= 1"),
        ("oracle", "needs the trace"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_predictor(spec)


def test_parse_spec_types() -> None:
    assert parse_spec("pg:lookahead=5:threshold=0.2") == ("pg", {"lookahead": 5, "threshold": 0.2})


def test_mithril_confidence_is_the_number_of_pairs_allowed_apart() -> None:
    # a and b are read together once, then far apart: one close pair of two.
    keys = ["a", "b"] + [f"x{i}" for i in range(10)] + ["a"] + [f"y{i}" for i in range(10)] + ["b"]
    keys += [f"z{i}" for i in range(3)] + ["z0", "z1", "z2"]  # fill the mining table to trigger mining
    for confidence, expected in ((1, [("b", 1.0)]), (0, [])):
        p = Mithril(lookahead=3, min_support=2, max_support=4, confidence=confidence, mining_size=5)
        feed(p, keys)
        p.observe("a", 0.0, True)
        assert p.predict(2) == expected, confidence


def test_predictors_from_above_come_through_the_registry() -> None:
    """``ml:MODEL_DIR`` reaches the model's loader through the ``predis.predictors`` entry point
    (prefetch never imports ml): a missing directory is ml's own one-line error; an unknown prefix
    names the registry."""
    from common.errors import ConfigError
    from prefetch.predictors import known

    assert "ml:MODEL_DIR" in known()
    with pytest.raises(ConfigError, match="no such model directory"):
        make_predictor("ml:/no/such/model", check_only=True)  # (the loader ran: ml's own check)
    with pytest.raises(ConfigError, match=r"unknown prefetcher 'zz'.*'predis\.predictors' entry points"):
        make_predictor("zz:x")
