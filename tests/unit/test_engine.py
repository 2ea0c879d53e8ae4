"""The live prediction engine's logic (prefetch.engine) and the A/B statistics (prefetch.abtest),
without processes or sockets."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from common.errors import ConfigError
from prefetch.abtest import MIN_GETS, SequentialTest, chi_square, difference, report
from prefetch.cpubudget import CpuBudget
from prefetch.engine import (
    ArmSplit,
    Engine,
    parse_arms,
    parse_shares,
    peer_db,
    peer_of_db,
    peer_of_stream,
    peer_stream,
)
from prefetch.predictors.markov import Markov


def keys(n: int, prefix: str = "k:") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


def test_the_split_is_stable_seeded_and_fair() -> None:
    split = ArmSplit([0.5, 0.5], seed=7)
    arms = [split.arm_of(k) for k in keys(20_000)]
    assert arms == [ArmSplit([0.5, 0.5], seed=7).arm_of(k) for k in keys(20_000)]
    assert abs(arms.count(0) / len(arms) - 0.5) < 0.02
    other = [ArmSplit([0.5, 0.5], seed=8).arm_of(k) for k in keys(20_000)]
    assert other != arms  # the seed moves keys between arms
    shares = ArmSplit([0.2, 0.8], seed=7)
    assert abs(sum(shares.arm_of(k) == 0 for k in keys(20_000)) / 20_000 - 0.2) < 0.02
    # Another process (another hash seed for str) puts every key in the same arm.
    code = "from prefetch.engine import ArmSplit; s = ArmSplit([0.5, 0.5], seed=7); print(''.join(str(s.arm_of(b'k:%d' % i)) for i in range(500)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout.strip()
    assert out == "".join(str(a) for a in arms[:500])


def test_each_arm_prefetches_only_its_own_keys_within_its_budget() -> None:
    engine = Engine([("A", "obl:k=2"), ("B", "obl:k=2")], seed=3, budget=1.0, shadow=50)
    records = [(1, 0, k, 100.0 + i * 0.001, False) for i, k in enumerate(keys(2_000))]
    out = engine.step(records, now=100.0)
    assert out, "a sequential scan makes OBL predict"
    split = engine.split
    assert all(split.arm_of(key) == arm and stream == 1 for _, key, arm, _, stream in out)
    for arm in (0, 1):
        figures = engine.figures[arm]
        assert figures.gets == sum(split.arm_of(k) == arm for k in keys(2_000))
        assert 0 < figures.prefetches <= figures.gets * 1.0 + engine.cap_tokens
    # Every predictor saw the whole stream: each arm's OBL followed the scan across both arms' keys.
    assert {k for _, k, _, _, _ in out} <= set(keys(2_010))
    # Hints: after each read, the keys the arms named (each arm's own), sent once until they change.
    hints = engine.take_hints()
    assert len(hints) == 2_000 - 2 and engine.take_hints() == []  # (OBL names nothing before a run)
    for db, source, named in hints:
        assert db == 0 and named and all(0 < int(k[2:]) - int(source[2:]) <= 4 for k in named)
        assert {split.arm_of(k) for k in named} <= {0, 1}
    engine._hint(0, b"k:7", (b"k:8",))  # (the same keys named again: nothing new to tell)
    engine._hint(0, b"k:7", (b"k:9",))
    assert engine.take_hints() == [(0, b"k:7", (b"k:9",))]
    # A proxy that applies no hints (prefetch_hints off): none are worked out, the prefetches the same.
    quiet = Engine([("A", "obl:k=2"), ("B", "obl:k=2")], seed=3, budget=1.0, shadow=50, hints=False)
    assert quiet.step(records, now=100.0) == out
    assert quiet.take_hints() == [] and not quiet.hints_sent


def test_the_ranker_runs_as_a_live_arm() -> None:
    """``rank`` is built from its sources by the same registry the engine uses: against plain
    Markov on a stream of repeated pairs it prefetches, within its budget, keys of its own arm."""
    engine = Engine(
        [("R", "rank:sources=obl+markov:refit=200:window=1000"), ("M", "markov")],
        seed=3,
        budget=1.0,
        shadow=20,
    )
    rng = random.Random(0)
    pairs = [(f"a:{rng.randrange(10**6)}".encode(), f"b:{rng.randrange(10**6)}".encode()) for _ in range(50)]
    stream = [key for _ in range(20) for pair in pairs for key in pair]
    out = []
    for start in range(0, len(stream), 100):
        batch = stream[start : start + 100]
        t = 100.0 + start * 0.001
        out += engine.step([(1, 0, k, t, False) for k in batch], now=t)
    ranked = [key for _, key, arm, _, _ in out if arm == 0]
    assert ranked and all(engine.split.arm_of(k) == 0 for k in ranked)
    figures = engine.figures[0]
    assert 0 < figures.prefetches <= figures.gets + engine.cap_tokens
    assert engine.predictors[0].fits > 0  # (it learned while serving)


def test_stale_records_are_observed_but_not_predicted_from() -> None:
    engine = Engine([("A", "obl:k=2")], budget=1.0, max_age=0.05)
    records = [(1, 0, k, 100.0, False) for k in keys(100)]
    assert engine.step(records, now=100.5) == []
    assert engine.figures[0].shed == 100 and engine.figures[0].gets == 100


class Batched:
    """A predictor that works a batch at a time, as the model's arm does: ``prepare`` is given the
    reads that ``observe`` will then be given one by one (the arm indexes its batch by them)."""

    name = "batched"
    max_footprint = 0

    def __init__(self) -> None:
        self.prepared: list[list[str]] = []
        self.observed: list[str] = []

    def prepare(self, reads: list[tuple[int, str, float, bool]]) -> None:
        self.prepared.append([key for _, key, _, _ in reads])

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.observed.append(key)

    def predict(self, k: int) -> list[tuple[str, float]]:
        return []

    def footprint(self) -> int:
        return 0


def test_an_engine_held_to_its_cpu_share_counts_stale_records_without_observing_them() -> None:
    """``observe_stale=False`` (an engine under a CPU share): a stale record is counted in its
    arm's figures (a GET, a hit or a miss, shed) and reaches no predictor, neither ``prepare`` nor
    ``observe``, so a batched arm's batch and its reads stay in step."""
    arm = Batched()
    engine = Engine([("A", "x")], make=lambda spec, **_: arm, budget=1.0, max_age=0.05)
    records = [(1, 0, k, 100.0 if i % 3 else 99.0, i % 2 == 0) for i, k in enumerate(keys(30))]
    engine.step(records, now=100.01, observe_stale=False)
    fresh = [k.decode() for i, k in enumerate(keys(30)) if i % 3]
    assert arm.prepared == [fresh] and arm.observed == fresh
    figures = engine.figures[0]
    assert (figures.gets, figures.hits, figures.shed) == (30, 15, 10)
    # By default the same records are all observed (the heuristics are cheap), the stale not predicted from.
    arm2 = Batched()
    engine2 = Engine([("A", "x")], make=lambda spec, **_: arm2, budget=1.0, max_age=0.05)
    engine2.step(records, now=100.01)
    assert arm2.observed == [k.decode() for k in keys(30)] and len(arm2.prepared[0]) == 30
    assert (engine2.figures[0].gets, engine2.figures[0].hits, engine2.figures[0].shed) == (30, 15, 10)


class Failing:
    name = "failing"
    max_footprint = 0

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        pass

    def predict(self, k: int) -> list[tuple[str, float]]:
        raise RuntimeError("boom")

    def footprint(self) -> int:
        return 0


def test_a_predictor_that_raises_costs_its_arm_the_read_not_the_engine() -> None:
    engine = Engine([("A", "x")], make=lambda spec, **_: Failing())
    assert engine.step([(1, 0, b"a", 1.0, False), (1, 0, b"b", 1.0, True)], now=1.0) == []
    figures = engine.figures[0].as_dict()
    assert figures["predict_errors"] == 2 and figures["gets"] == 2 and figures["misses"] == 1


def test_bad_arms_are_one_line_errors() -> None:
    assert parse_arms("A=markov, B=pg:lookahead=10") == [("A", "markov"), ("B", "pg:lookahead=10")]
    with pytest.raises(ConfigError, match="NAME=SPEC"):
        parse_arms("A=markov,pg")
    with pytest.raises(ConfigError, match="at least two arms"):
        parse_arms("A=markov")
    with pytest.raises(ConfigError, match="named twice"):
        parse_arms("A=markov,A=pg")
    with pytest.raises(ConfigError, match="unknown prefetcher 'bogus'"):
        Engine([("A", "bogus")])
    assert parse_shares("30,70", 2) == [0.3, 0.7]
    with pytest.raises(ConfigError, match="one positive share per arm"):
        parse_shares("30,70,10", 2)


def test_chi_square_and_the_interval() -> None:
    from scipy.stats import chi2_contingency

    arms = [(600, 400), (500, 500)]
    assert chi_square(arms) == pytest.approx(
        chi2_contingency([[600, 400], [500, 500]], correction=False).pvalue
    )
    assert chi_square(arms) < 1e-4  # (a 10-point difference on 1,000 reads each)
    diff, low, high = difference(arms[0], arms[1])  # type: ignore[misc]
    assert (
        diff == pytest.approx(0.1)
        and low < 0.1 < high
        and high - low == pytest.approx(2 * 1.96 * 0.0221, rel=0.02)
    )
    assert chi_square([(0, 10), (0, 10)]) == 1.0 and chi_square([(0, 0), (1, 1)]) is None


def test_a_winner_only_with_enough_reads_and_a_small_p() -> None:
    few = report([{"name": "A", "gets": 100, "hits": 90}, {"name": "B", "gets": 100, "hits": 10}])
    assert few["winner"] is None and not few["enough_data"] and few["chi2_p"] < 1e-10
    n = MIN_GETS * 2
    won = report([{"name": "A", "gets": n, "hits": n * 6 // 10}, {"name": "B", "gets": n, "hits": n // 2}])
    assert won["winner"] == "A" and won["arms"][1]["hit_ratio"] == 0.5
    tie = report([{"name": "A", "gets": n, "hits": n // 2}, {"name": "B", "gets": n, "hits": n // 2}])
    assert tie["winner"] is None


def test_the_sequential_p_value_never_rises_and_rarely_fires_on_equal_arms() -> None:
    """Watched after every 100 reads of two equal arms, the always-valid p-value stays above alpha
    in most of 40 seeded experiments (a fixed-sample test read this often would fire far more)."""
    import random

    fired = 0
    for seed in range(40):
        rng = random.Random(seed)
        test = SequentialTest()
        a = [0, 0]
        b = [0, 0]
        last = 1.0
        for _ in range(50):
            for arm in (a, b):
                hits = sum(rng.random() < 0.5 for _ in range(100))
                arm[0] += hits
                arm[1] += 100 - hits
            p = test.look("A-B", (a[0], a[1]), (b[0], b[1]))
            assert p <= last
            last = p
        fired += last < 0.01
    assert fired <= 2


def test_the_sequential_p_value_is_not_fooled_by_the_first_reads() -> None:
    """Two equal arms at a 95% hit ratio, watched from their very first reads (as a dashboard
    does): a few reads in, one arm can be all hits and the other not, which a plug-in variance
    reads as overwhelming evidence; the always-valid p-value must still rarely fire."""
    import random

    fired = 0
    for seed in range(40):
        rng = random.Random(seed)
        test = SequentialTest()
        a, b = [0, 0], [0, 0]
        p = 1.0
        for step in range(3_000):
            for arm in (a, b):
                hit = rng.random() < 0.95
                arm[0 if hit else 1] += 1
            if step < 300 or step % 100 == 0:
                p = test.look("A-B", (a[0], a[1]), (b[0], b[1]))
        fired += p < 0.01
    assert fired <= 2


class Shaped:
    """A predictor that names keys by their shape, as the model does: after user:N:profile,
    user:N:orders."""

    name = "shaped"
    max_footprint = 0
    template_hints = True

    def __init__(self) -> None:
        self.last = ""

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.last = key

    def predict(self, k: int) -> list[tuple[str, float]]:
        if self.last.endswith(":profile"):
            # (the orders key is read next; the ghost key, the same number in another template, never)
            return [
                (self.last.replace(":profile", ":orders"), 0.9),
                (self.last.replace(":profile", ":ghost"), 0.8),
                ("home", 0.5),
            ]
        return []

    def footprint(self) -> int:
        return 0


def test_a_shaped_arm_teaches_the_template_rules_it_follows() -> None:
    """Once a shape-aware predictor has named user:N:orders after user:N:profile and the client
    then read it, three times (for any N), the engine teaches the rule user:#:profile ->
    user:#:orders once; user:N:ghost, named as often but never read, is never taught; a heuristic
    arm teaches none."""
    engine = Engine(
        [("S", "x"), ("M", "markov")], make=lambda spec, **_: Shaped() if spec == "x" else Markov()
    )

    def visit(*numbers: int, client: int = 1) -> list[tuple[int, int, bytes, float, bool]]:
        parts = (b"profile", b"orders")
        return [(client, 0, b"user:%d:%s" % (n, part), 1.0, False) for n in numbers for part in parts]

    engine.step(visit(7, 8), now=1.0)
    assert engine.take_rules() == []  # (read after it twice: not yet)
    engine.step([(1, 0, b"user:9:profile", 1.0, False), (2, 0, b"user:9:orders", 1.0, False)], now=1.0)
    assert engine.take_rules() == []  # (another client read it: not what was named for client 1)
    engine.step(visit(10, 11, 12), now=1.0)
    assert engine.take_rules() == [(0, "user:#:profile", "user:#:orders")]
    assert engine.take_rules() == []
    # A proxy that applies no rules (prefetch_rules off): the engine learns none.
    ruleless = Engine(
        [("S", "x"), ("M", "markov")],
        make=lambda spec, **_: Shaped() if spec == "x" else Markov(),
        rules=False,
    )
    ruleless.step(visit(7, 8, 10, 11, 12), now=1.0)
    assert ruleless.take_rules() == [] and not ruleless.rule_counts
    # Rules are bounded in all (the proxy keeps what it is taught): none past RULES_MAX.
    import prefetch.engine as engine_module

    engine.rules_count = engine_module.RULES_MAX
    engine.step(
        [(1, 0, b"shop:%d:%s" % (n, p), 1.0, False) for n in range(5) for p in (b"profile", b"orders")],
        now=1.0,
    )
    assert engine.take_rules() == []


def test_one_engine_for_several_peers_keeps_their_figures_shadows_and_streams_apart() -> None:
    """Two workers' reads of the same keys through one engine (their streams and dbs in each
    peer's range, as the shared engine's process puts them): a successor one worker's client
    taught is prefetched for the other's, into the other's tier; each worker's figures count its
    own reads, and a reset starts both again."""
    engine = Engine([("prefetch", "markov")], budget=1.0, shadow=1_000)
    pairs = [(f"s:{i}".encode(), f"d:{i}".encode()) for i in range(30)]
    teach = [
        (peer_stream(0, 1), peer_db(0, 0), k, 1.0, False) for _ in range(3) for pair in pairs for k in pair
    ]
    engine.step(teach, now=1.0)
    out = engine.step([(peer_stream(1, 1), peer_db(1, 0), s, 2.0, False) for s, _ in pairs], now=2.0)
    # (peer 0's reads put every d:i in its shadow; peer 1's tier holds none, so it gets them)
    got = {(peer_of_db(db), key, peer_of_stream(stream)) for db, key, _, _, stream in out}
    wanted = {d for _, d in pairs}
    assert {key for _, key, _ in got} == wanted
    assert all(db == (1, 0) and stream == (1, 1) for db, _, stream in got)
    zero, one = engine.report(0)["arms"], engine.report(1)["arms"]
    assert sum(a["gets"] for a in zero) == len(teach) and sum(a["gets"] for a in one) == len(pairs)
    assert sum(a["prefetches"] for a in one) == len(out)
    engine.reset()
    assert sum(a["gets"] for a in engine.report(0)["arms"] + engine.report(1)["arms"]) == 0
    engine.forget(1)
    assert set(engine.peer_figures) == {0}


def test_an_engine_is_silent_only_while_records_wait_for_it() -> None:
    """The watchdog's measure (proxy.prediction.silence): an engine idle for a minute that has not
    yet answered the batch sent a moment ago is not a minute silent."""
    from proxy.prediction import silence

    assert silence(
        now=100.0, ready=True, last_sent=99.9, last_heard=40.0, waiting_since=99.9
    ) == pytest.approx(0.1)
    assert silence(
        now=103.0, ready=True, last_sent=102.0, last_heard=40.0, waiting_since=99.9
    ) == pytest.approx(3.1)
    assert (
        silence(now=100.0, ready=True, last_sent=50.0, last_heard=60.0, waiting_since=50.0) == 0.0
    )  # answered
    assert (
        silence(now=100.0, ready=False, last_sent=0.0, last_heard=97.0, waiting_since=0.0) == 3.0
    )  # starting


@pytest.mark.parametrize("priority", ["realtime", "idle"])
def test_the_engine_priority_is_set_or_its_refusal_said(priority: str) -> None:
    """``realtime`` puts the engine's process under SCHED_RR where the process may (root, or
    CAP_SYS_NICE); where it may not, one line on stderr says so and it runs as before."""
    import os

    code = (
        "import os; from prefetch.engine_process import set_priority; "
        f"set_priority({priority!r}); print(os.sched_getscheduler(0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    policy = int(out.stdout)
    wanted = os.SCHED_RR if priority == "realtime" else os.SCHED_IDLE
    if policy == wanted:
        assert out.stderr == ""
    else:  # (refused: this process may not)
        assert priority == "realtime" and policy == os.SCHED_OTHER
        assert out.stderr.startswith("prediction engine: realtime priority refused ("), out.stderr


def test_the_cpu_budget_pauses_the_engine_to_its_share_in_stretches() -> None:
    """An engine that would run all the time is paused to its share of a core over a long run, in
    a few long pauses rather than one after every round; at share 1 it is never paused."""
    for share in (0.1, 0.25, 0.5):
        budget = CpuBudget(share)
        wall = cpu = 0.0
        pauses = []
        for _ in range(20_000):  # rounds of 1 ms of work each
            wall += 0.001
            cpu += 0.001
            pause = budget.pause_after(wall, cpu)
            if pause:
                pauses.append(pause)
                wall += pause
        assert cpu / wall == pytest.approx(share, rel=0.05)
        assert budget.paused == pytest.approx(sum(pauses))
        assert len(pauses) < 20_000 / 5  # (stretches of several rounds between pauses)
        assert max(pauses) <= budget.max_pause
    # Within its share (1 ms of work in 10 ms at 0.25), never paused; at 1, never, whatever it does.
    light, free = CpuBudget(0.25), CpuBudget(1.0)
    assert not any(light.pause_after(i * 0.01, i * 0.001) for i in range(1_000))
    assert not any(free.pause_after(i * 0.001, i * 0.001) for i in range(1_000))
    assert not free.bounded and light.bounded
    # Within a round: over once the share and the burst are spent (the rest of the round is shed).
    round_ = CpuBudget(0.1)
    assert not round_.over(0.0, 0.0) and not round_.over(0.01, 0.02)
    assert round_.over(0.02, 0.03) and not free.over(0.0, 100.0)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            CpuBudget(bad)
