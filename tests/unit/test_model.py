"""The next-key model: it learns a planted sequence, round-trips through safetensors, refuses
corrupt models with one line, and keeps its vocabulary bounded."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ml.inference.arm import predict_streams  # noqa: E402
from ml.registry import ModelError, load_model, next_version, resolve, save_model, set_current  # noqa: E402
from ml.training.data import encode  # noqa: E402
from ml.training.precision import bf16_failure  # noqa: E402
from ml.training.train import TrainConfig, train  # noqa: E402
from ml.vocab import UNK, Vocabulary, fill, template_of  # noqa: E402
from tests.helpers import CYCLE, phase_keys, planted_log, profiles_log, small_training, walk  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model")
    torch.set_num_threads(2)
    metrics = train(
        planted_log(),
        out,
        small_training(epochs=12, patience=12, max_keys=64),  # (the ranker's own tests are below)
    )
    return out, metrics


def test_learns_a_planted_sequence(trained: tuple[Path, dict]) -> None:
    _, metrics = trained
    assert metrics["precision"] == "fp32"
    assert metrics["model"]["top1"] > 0.95, metrics["model"]
    assert metrics["model"]["recall@10_within_10"] > 0.95
    assert metrics["history"][-1]["val_loss"] < metrics["history"][0]["val_loss"]


def test_save_load_round_trip(trained: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = trained
    model, vocab, manifest = load_model(path)
    assert manifest["format"] == "predis-lstm/1" and manifest["data"]["reads"] == 6000
    assert (path / "metrics.json").exists()
    again = save_model(model, vocab, tmp_path / "copy", metrics=manifest["metrics"])
    model2, vocab2, _ = load_model(again)
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    log = planted_log(500)
    enc = encode(log, vocab)
    first = predict_streams(model, vocab, enc, np.arange(len(enc)))[0]
    second = predict_streams(model2, vocab2, encode(log, vocab2), np.arange(len(enc)))[0]
    assert list(first) == list(second)


def test_registry_versions_and_current(trained: tuple[Path, dict], tmp_path: Path) -> None:
    model, vocab, _ = load_model(trained[0])
    reg = tmp_path / "reg"
    v1 = save_model(model, vocab, next_version(reg))
    set_current(reg, v1)
    v2 = save_model(model, vocab, next_version(reg))
    assert (v1.name, v2.name) == ("v0001", "v0002")
    assert resolve(reg) == v1
    set_current(reg, v2)
    assert resolve(reg) == v2 and load_model(reg)[2]["format"] == "predis-lstm/1"


def test_corrupt_truncated_and_mismatched_models_fail_with_one_line(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    import shutil

    def broken(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(trained[0], dst)
        return dst

    cut = broken("cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    bad_manifest = broken("manifest")
    (bad_manifest / "manifest.json").write_text("{not json")
    other_format = broken("format")
    doc = json.loads((other_format / "manifest.json").read_text())
    doc["format"] = "predis-lstm/99"
    (other_format / "manifest.json").write_text(json.dumps(doc))
    mismatched = broken("mismatch")
    doc = json.loads((mismatched / "manifest.json").read_text())
    doc["config"]["hidden"] = 64
    (mismatched / "manifest.json").write_text(json.dumps(doc))
    cases = [
        (cut, "does not match its manifest"),
        (bad_manifest, "is corrupt"),
        (other_format, "model format"),
        (mismatched, "cannot load the weights"),
        (tmp_path / "absent", "no such model directory"),
    ]
    for path, message in cases:
        with pytest.raises(ModelError, match=message) as info:
            load_model(path)
        assert "\n" not in str(info.value)


def test_vocabulary_is_bounded_and_open() -> None:
    keys = [f"user:{i}:cart" for i in range(1_000_000)] + ["hot"] * 5
    vocab = Vocabulary.build(keys, max_keys=1000, max_templates=10)
    assert vocab.key_size == 1002 and vocab.template_size <= 12
    assert vocab.key_token("hot") >= 2
    assert vocab.key_token("user:999999999:cart") == UNK  # never seen: UNK, no error
    assert vocab.template_token("user:999999999:cart") >= 2  # but its shape is known
    assert template_of("a:12:b:7") == "a:#:b:#" and fill("user:#:cart", ["42"]) == "user:42:cart"
    assert fill("user:#:cart", []) is None
    back = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert back.keys == vocab.keys and back.templates == vocab.templates


def test_online_steps_match_the_batched_pass(trained: tuple[Path, dict]) -> None:
    # The proxy's path (one LSTM step per read, real-time features) and the simulator's (each
    # client's stream in one pass, offline features) name the same keys.
    from ml.inference.stepper import OnlineStepper

    model, vocab, _ = load_model(trained[0])
    log = planted_log(400)
    enc = encode(log, vocab)
    batched = predict_streams(model, vocab, enc, np.arange(len(enc)))[0]
    # Fewer streams per batch than clients, and chunks shorter than the streams: several batches
    # per round and several rounds, the state carried across them.
    small = predict_streams(model, vocab, enc, np.arange(len(enc)), batch=3, length=16)[0]
    assert [[k for k, _ in row] for row in small] == [[k for k, _ in row] for row in batched]
    stepper = OnlineStepper(model, vocab)
    keys, ts, clients = log.keys(), log.timestamps(), log.column("client")
    online = [stepper.step([(int(c), k, float(t))])[0] for k, t, c in zip(keys, ts, clients, strict=True)]
    assert [[k for k, _ in row] for row in online] == [[k for k, _ in row] for row in batched]


def test_batched_replay_hits_what_the_per_read_path_hits(trained: tuple[Path, dict]) -> None:
    """The simulator's ML arm (every read's candidates computed up front, in batches over the
    clients' streams) against the same arm fed one read at a time through the stepper, as the live
    engine would at batch one (``LiveMLPredictor``): the same hits and prefetches in a replay."""
    from ml.inference.arm import MLPredictor
    from ml.inference.live import LiveMLPredictor
    from prefetch.sim import replay

    class OneReadAtATime(LiveMLPredictor):
        def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
            self.prepare([(client, key, t, True)])
            super().observe(key, t, hit, client)

    log = planted_log(900, clients=5)
    keys, times, clients = log.keys(), log.timestamps().tolist(), log.column("client").tolist()
    params = {"fallback": "markov", "min_confidence": 0.5}
    results = []
    for arm in (
        MLPredictor(str(trained[0]), log, **params),
        OneReadAtATime(str(trained[0]), device="cpu", **params),
    ):
        results.append(replay(keys, 5, arm, times=times, clients=clients))
    batched, per_read = results
    plain = replay(keys, 5, MLPredictor(str(trained[0]), log, fallback="none", min_confidence=math.inf))
    assert batched.prefetches > 0 and batched.hits > 2 * plain.hits  # (the model's prefetches count)
    assert (batched.hits, batched.prefetches, batched.prefetch_hits) == (
        per_read.hits,
        per_read.prefetches,
        per_read.prefetch_hits,
    )


def test_batched_stepper_names_what_one_step_per_read_names(trained: tuple[Path, dict]) -> None:
    """The engine's path (``run``: a batch in read order, a client's several reads in it, the LSTM
    in waves and the heads once) against the per-read path it replaced (``step_scored``, one read
    at a time): the same keys in the same order for every read; scores and confidence equal within
    float rounding (the two batch the matrix products differently)."""
    from ml.inference.stepper import OnlineStepper

    model, vocab, _ = load_model(trained[0])
    log = planted_log(600, clients=5)
    reads = [
        (int(c), k, float(t))
        for k, t, c in zip(log.keys(), log.timestamps(), log.column("client"), strict=True)
    ]
    batched, single = OnlineStepper(model, vocab), OnlineStepper(model, vocab)
    sizes = [1, 7, 64, 3, 128, 256]  # batches of several sizes, most holding a client many times
    got: list[list[tuple[str, float]]] = []
    conf_b: list[float] = []
    at = 0
    for size in sizes * 4:
        cands, conf = batched.run(reads[at : at + size])
        got += cands
        conf_b += conf.tolist()
        at += size
        if at >= len(reads):
            break
    want: list[list[tuple[str, float]]] = []
    conf_s: list[float] = []
    for read in reads[: len(got)]:
        cands, conf = single.step_scored([read])
        want += cands
        conf_s += conf.tolist()
    assert len(got) == len(want) >= 600
    assert [[k for k, _ in row] for row in got] == [[k for k, _ in row] for row in want]
    assert (
        max(abs(a - b) for g, w in zip(got, want, strict=True) for (_, a), (_, b) in zip(g, w, strict=True))
        < 1e-5
    )
    assert np.allclose(conf_b, conf_s, atol=1e-5)
    # The planted cycle is learnt: the batched path names the next key first for most reads.
    cycle = CYCLE
    follows = {cycle[i]: cycle[(i + 1) % 12] for i in range(12)}
    right = sum(row[0][0] == follows[r[1]] for row, r in zip(got, reads, strict=False) if row)
    assert right > 0.9 * len(got)


def test_batch_composer_is_compose_exactly() -> None:
    """BatchComposer against compose, read by read, on outputs where every path is taken:
    key-head names with PAD and UNK among them, successor keys overlapping them, templates filled
    from each read's recent keys (over and under the floor, with slot counts that do not match)."""
    from ml.inference.compose import BatchComposer, compose

    rng = np.random.default_rng(3)
    keys = [f"user:{i}:cart" for i in range(40)] + [f"item:{i}" for i in range(40)] + ["home"]
    vocab = Vocabulary(keys, ["user:#:cart", "item:#", "order:#:line:#", "home", "page:{x}:#"])
    n, width = 200, 8
    ki = np.stack([rng.permutation(vocab.key_size)[:10] for _ in range(n)])  # (distinct, as top-k's)
    kp = rng.dirichlet(np.ones(10), n).astype(np.float32)
    ti = rng.integers(0, vocab.template_size, (n, 3))
    tp = rng.dirichlet(np.ones(3) * 0.3, n).astype(np.float32)
    copy = rng.dirichlet(np.ones(width + 1) * 0.2, n).astype(np.float32)
    latest = [
        tuple(
            rng.choice(keys + ["order:7:line:9", "page:{x}:3"], size=int(rng.integers(1, width + 1))).tolist()
        )
        for _ in range(n)
    ]
    succ = [[str(k) if k else "" for k in rng.choice(keys + [""], size=4)] for _ in range(n)]
    sp = rng.dirichlet(np.ones(5), n).astype(np.float32)
    got = BatchComposer(vocab)(ki, kp, ti, tp, copy, latest, 6, succ, sp)
    for j in range(n):
        want = compose(
            vocab,
            ki[j].tolist(),
            kp[j].tolist(),
            ti[j].tolist(),
            tp[j].tolist(),
            list(reversed(latest[j])),
            6,
            copy[j].tolist(),
            succ[j],
            sp[j, : len(succ[j])].tolist(),
        )
        assert got[j] == want, j
    # Templates were filled: keys no key-head token or successor slot named.
    named = {vocab.key_of(int(t)) for row in ki for t in row} | {k for row in succ for k in row}
    assert any(k not in named for row in got for k, _ in row)


def test_the_ranker_takes_the_model_as_a_source(profiles_model: Path) -> None:
    """``ml:DIR::rank=1`` in the simulator: the learned ranker over the heuristics and the model.
    On profiles then orders of random users (the orders key is new each time: only the model's
    template names it) it prefetches what the model names, far above the heuristics alone; live
    it is refused in one line."""
    from common.errors import ConfigError
    from prefetch.predictors import make_predictor
    from prefetch.predictors.ranker import Ranker
    from prefetch.sim import simulate

    log = profiles_log()
    spec = f"ml:{profiles_model}::rank=1"
    assert isinstance(make_predictor(spec, log=log), Ranker)
    report = simulate(log, "100", ["rank", spec], with_belady=False, warmup=0.3)
    arms = {a.arm.partition("@")[0]: a for a in report.arms}
    assert arms[spec].hit_ratio > arms["rank"].hit_ratio + 0.2, {k: a.hit_ratio for k, a in arms.items()}
    with pytest.raises(ConfigError, match="simulator only"):
        make_predictor(spec)


def test_the_model_as_a_live_engine_arm(trained: tuple[Path, dict], tmp_path: Path) -> None:
    """The ``ml:`` spec in the live engine: the model steps over each batch and its arm prefetches
    the planted cycle's next keys (each its own arm's); stale reads reach only the fallback; a
    model that cannot load, or raises, leaves the arm its fallback heuristic, counted by reason."""
    from ml.inference.live import LiveMLPredictor
    from prefetch.engine import Engine

    cycle = CYCLE
    follows = {cycle[i]: cycle[(i + 1) % 12] for i in range(12)}
    log = planted_log(800, clients=4)
    records = [
        (int(c), 0, k.encode(), float(t), False)
        for k, t, c in zip(log.keys(), log.timestamps(), log.column("client"), strict=True)
    ]
    engine = Engine([("ML", f"ml:{trained[0]}::device=cpu"), ("NONE", "none")], max_age=1.0)
    ml = engine.predictors[0]
    assert isinstance(ml, LiveMLPredictor) and ml.stepper is not None
    asked = []
    for at in range(0, len(records), 50):
        batch = records[at : at + 50]
        engine.shadows[0].clear()  # (the 12 keys fit the shadow of the tier: held, never asked again)
        out = engine.step(batch, now=batch[-1][3])
        asked += [(key.decode(), t) for _, key, arm, t, _ in out if arm == 0]
    # Every prefetch is a key of the ML arm's; the NONE arm asks for nothing.
    assert all(engine.split.arm_of(k.encode()) == 0 for k, _ in asked) and len(asked) > 50
    assert engine.figures[1].prefetches == 0
    # The arm's first candidate after a read is the planted successor (the model's, through the
    # gate the manifest recorded), as the simulator's arm would name it.
    live = LiveMLPredictor(str(trained[0]), device="cpu")
    batch = [(c, key.decode(), t, True) for c, _, key, t, _ in records[:400]]
    live.prepare(batch)
    right = 0
    for c, key, t, _ in batch:
        live.observe(key, t, False, c)
        right += live.predict(1)[0][0] == follows[key]
    assert right > 0.9 * len(batch)
    report = engine.report()["arms"][0]
    assert report["predictor"]["model"] == "loaded" and report["predictor"]["model_reads"] == len(records)
    assert report["predictor"]["fallbacks"] == {"model_load": 0, "model_error": 0}

    # Stale reads (older than max_age when stepped) are shed: the model does not step over them.
    before = ml.model_reads
    engine.step(records[:10], now=records[9][3] + 5.0)
    assert ml.model_reads == before and engine.figures[0].shed + engine.figures[1].shed == 10

    # A model that raises: its batches are served by the fallback alone, counted per read.
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access")

    ml.stepper.run = broken
    engine.step(records[:20], now=records[19][3])
    assert ml.reasons["model_error"] == 20 and ml.model_errors == 1

    # A model that cannot be loaded (gone since the proxy checked it): the fallback alone.
    gone = LiveMLPredictor(str(tmp_path / "absent"), device="cpu")
    assert gone.stepper is None and gone.reasons["model_load"] == 1
    assert "no such model directory" in gone.figures()["load_error"]
    assert gone.fallback_spec == "markov"
    gone.prepare([(0, cycle[0], 0.0, True), (0, cycle[1], 0.1, True), (0, cycle[0], 0.2, True)])
    for key, t in ((cycle[0], 0.0), (cycle[1], 0.1), (cycle[0], 0.2)):
        gone.observe(key, t, False, 0)
    assert gone.predict(4)[0][0] == cycle[1]  # (Markov's: cycle[1] followed cycle[0])


def test_online_stepper_drops_the_least_recent_client(trained: tuple[Path, dict]) -> None:
    """Past max_clients, the least recently active client's state row is reused: the others' states
    are untouched, and the dropped client starts over as a new one would."""
    from ml.inference.stepper import OnlineStepper

    model, vocab, _ = load_model(trained[0])
    cycle = CYCLE
    reads = [(0, cycle[0]), (1, cycle[3]), (2, cycle[6]), (1, cycle[4]), (2, cycle[7])]
    bounded, unbounded = OnlineStepper(model, vocab, max_clients=2), OnlineStepper(model, vocab)
    for t, (client, key) in enumerate(reads):
        got = bounded.step([(client, key, float(t))])
        assert got == unbounded.step([(client, key, float(t))])
    assert list(bounded.slot_of) == [1, 2] and 0 not in bounded.recent
    assert bounded.pool.shape[2] == 2
    # Client 0 returns: in the bounded stepper it starts from a zero state, as in a stepper that
    # never saw its first read.
    fresh = OnlineStepper(model, vocab)
    for t, (client, key) in enumerate(reads):
        if client:
            fresh.step([(client, key, float(t))])
    back = (0, cycle[1], float(len(reads)))
    assert bounded.step([back]) == fresh.step([back]) != unbounded.step([back])
    with pytest.raises(ValueError, match="max_clients"):
        bounded.step([(5, cycle[0], 9.0), (6, cycle[1], 9.0), (7, cycle[2], 9.0)])


def test_fallback_prefetcher_from_the_long_window_policy_from_the_latest_reads() -> None:
    from ml.training.selection import choose_fallback

    # cloudPhysicsIO's training window at 1%: the validation reads hit 2% and rank Markov first;
    # the long window ranks PG first by far. The policy under PG is the validation reads' choice.
    recent = {"markov@s3fifo": 0.0218, "pg@s3fifo": 0.0195, "pg@lru": 0.0190, "none@lru": 0.01}
    long = {"markov@s3fifo": 0.048, "pg@s3fifo": 0.1126, "pg@lru": 0.1135, "none@lru": 0.03}
    assert choose_fallback(recent, long) == "pg@s3fifo"
    # web07's: the long window ranks LRU first by a hair, the latest reads S3-FIFO.
    recent = {"frequency@lru": 0.4410, "frequency@s3fifo": 0.4506, "none@s3fifo": 0.4333}
    long = {"frequency@lru": 0.3265, "frequency@s3fifo": 0.3238, "none@s3fifo": 0.3115}
    assert choose_fallback(recent, long) == "frequency@s3fifo"


def test_the_ranker_is_a_fallback_candidate_beside_the_best_heuristic() -> None:
    from ml.training.selection import choose_fallback, fallback_candidates

    # cloudPhysicsIO's training window at 1%: the long window, which starts while the ranker is
    # still learning, ranks it under delta; the validation reads rank it 5 points above.
    recent = {
        "delta@lru": 0.1806,
        "delta@s3fifo": 0.1794,
        "pg@lru": 0.0176,
        "rank@lru": 0.2325,
        "rank@s3fifo": 0.21,
    }
    long = {
        "delta@lru": 0.4668,
        "delta@s3fifo": 0.475,
        "pg@lru": 0.11,
        "rank@lru": 0.425,
        "rank@s3fifo": 0.4081,
    }
    assert choose_fallback(recent, long) == "delta@lru"  # (by the long window alone: never the ranker)
    assert fallback_candidates(recent, long) == ["delta@lru", "rank@lru"]
    # Without the ranker's replays (the budget skipped them), the heuristic alone.
    heuristics = {a: v for a, v in long.items() if not a.startswith("rank@")}
    assert fallback_candidates(recent, heuristics) == ["delta@lru"]


def test_the_fallback_is_chosen_with_the_gate_by_the_arms_replays_over_each() -> None:
    from ml.training.selection import pick_fallback_and_gate

    # cloudPhysicsIO's training window (the arm's replays on the validation reads, gate by gate):
    # over delta the arm beat delta alone at both sizes, but the ranker alone beat it at 1% and
    # the arm over the ranker beat everything at 5%. The choice before was made over delta only.
    by_fallback = {
        "0.01": {
            "delta@lru": {"0.5": 0.187, "-1.0": 0.1851, "-2.0": 0.1851},
            "rank@lru": {"0.5": 0.2308, "-1.0": 0.2265, "-2.0": 0.2264},
        },
        "0.05": {
            "delta@lru": {"0.5": 0.205, "-1.0": 0.2014, "-2.0": 0.2014},
            "rank@lru": {"0.5": 0.2763, "-1.0": 0.271, "-2.0": 0.2642},
        },
    }
    alone = {0.01: {"delta@lru": 0.1806, "rank@lru": 0.2325}, 0.05: {"delta@lru": 0.1973, "rank@lru": 0.2693}}
    gate, fallbacks, gates = pick_fallback_and_gate(by_fallback, alone, ["0.5", "-1.0", "-2.0"])
    assert gate == "0.5"
    assert fallbacks == {"0.01": "rank@lru", "0.05": "rank@lru"}
    assert gates == {"0.01": "off", "0.05": 0.5}
    # The delta figures alone: the arm over delta at both sizes, as before.
    only_delta = {s: {"delta@lru": f["delta@lru"]} for s, f in by_fallback.items()}
    assert pick_fallback_and_gate(only_delta, alone, ["0.5", "-1.0", "-2.0"])[1:] == (
        {"0.01": "delta@lru", "0.05": "delta@lru"},
        {"0.01": 0.5, "0.05": 0.5},
    )
    # A tie between the arms over the two goes to the first listed (the heuristic: cheaper), and
    # one between an arm and a fallback alone to the arm.
    tied = {"0.05": {"delta@lru": {"0.5": 0.3}, "rank@lru": {"0.5": 0.3}}}
    assert pick_fallback_and_gate(tied, {0.05: {"delta@lru": 0.1, "rank@lru": 0.3}}, ["0.5"]) == (
        "0.5",
        {"0.05": "delta@lru"},
        {"0.05": 0.5},
    )
    # P6's first million reads: the discount (-2) ahead of the merge (-1) by 0.03 point a size is a
    # tie, and a tie goes to the merge (judged on the rest of the trace, -1 was 0.34-0.52 ahead).
    p6 = {
        "0.01": {
            "delta@lru": {"0.5": 0.9412, "-1.0": 0.975, "-2.0": 0.9752},
            "rank@s3fifo": {"0.5": 0.9218, "-1.0": 0.9478, "-2.0": 0.923},
        },
        "0.02": {
            "delta@lru": {"0.5": 0.9418, "-1.0": 0.9758, "-2.0": 0.976},
            "rank@lru": {"0.5": 0.9334, "-1.0": 0.9759, "-2.0": 0.925},
        },
        "0.05": {
            "delta@lru": {"0.5": 0.9426, "-1.0": 0.9766, "-2.0": 0.9769},
            "rank@lru": {"0.5": 0.9192, "-1.0": 0.9261, "-2.0": 0.9412},
        },
        "0.1": {
            "delta@lru": {"0.5": 0.9432, "-1.0": 0.9772, "-2.0": 0.9777},
            "rank@lru": {"0.5": 0.8938, "-1.0": 0.9772, "-2.0": 0.9415},
        },
    }
    p6_alone = {
        0.01: {"delta@lru": 0.9696, "rank@s3fifo": 0.9444},
        0.02: {"delta@lru": 0.9704, "rank@lru": 0.9512},
        0.05: {"delta@lru": 0.9713, "rank@lru": 0.9156},
        0.1: {"delta@lru": 0.9718, "rank@lru": 0.9655},
    }
    gate, fallbacks, gates = pick_fallback_and_gate(p6, p6_alone, ["0.5", "-1.0", "-2.0"])
    assert gate == "-1.0" and set(gates.values()) == {-1.0}
    assert set(fallbacks.values()) == {"delta@lru"}  # (at 10% a tie with the ranker: the heuristic)
    # Ahead by more than the tie, the discount stays.
    p6["0.05"]["delta@lru"]["-2.0"] = 0.9866
    assert pick_fallback_and_gate(p6, p6_alone, ["0.5", "-1.0", "-2.0"])[0] == "-2.0"
    # No gate replayed (the budget left none): the best fallback alone on the validation reads.
    assert pick_fallback_and_gate({s: {f: {} for f in v} for s, v in by_fallback.items()}, alone, []) == (
        "off",
        {"0.01": "rank@lru", "0.05": "rank@lru"},
        {"0.01": "off", "0.05": "off"},
    )


def test_the_floor_is_the_best_replay_and_a_tie_goes_to_a_floor() -> None:
    from ml.training.selection import pick_floor

    # The retrained model's window: no floor hit one read more than 0.2 did, and 0.1 as much.
    tried = {"0.0": 0.5, "0.1": 0.5, "0.15": 0.4969, "0.2": 0.4969, "0.25": 0.45, "0.3": 0.40}
    assert pick_floor(tried) == 0.1
    # A floor that clearly hits more wins, however high; no floor that clearly hits more wins too.
    assert pick_floor({"0.0": 0.30, "0.1": 0.31, "0.3": 0.36}) == 0.3
    assert pick_floor({"0.0": 0.36, "0.1": 0.30, "0.2": 0.31}) == 0.0
    # Only no floor tried (the time budget allowed none): none.
    assert pick_floor({"0.0": 0.2}) == 0.0


def test_successor_candidates_are_causal_and_per_client() -> None:
    from ml.training.data import successor_candidates

    names = ["a", "b", "c", "x"]
    # client 0 reads a b a b a; client 1 reads a c interleaved (its own transition a -> c).
    seq = [(0, 0), (1, 0), (0, 1), (0, 0), (2, 1), (1, 0), (0, 0)]
    codes = np.array([k for k, _ in seq])
    client = np.array([c for _, c in seq])
    cand, feats = successor_candidates(names, codes, client, slots=2)
    assert cand[0].tolist() == [-1, -1]  # nothing has followed a yet
    assert cand[2].tolist() == [1, -1] and feats[2, 0].tolist() == [1.0, 1.0]  # after a: b, share 1
    assert cand[4].tolist() == [-1, -1]  # after c: nothing yet
    assert sorted(cand[6].tolist()) == [1, 2] and abs(feats[6, :, 0].sum() - 1.0) < 1e-6  # a: b or c
    for i in range(len(seq)):  # every candidate was read before
        assert all(c in codes[:i].tolist() for c in cand[i] if c >= 0)


def test_replay_slots_name_the_shifted_start_of_a_clients_last_walk() -> None:
    """After key z, a client that last time read e5 next gets, in the replay slots, e5 (unless the
    successor table already names it), e5's usual predecessor e4 (a key this client never read after
    z) and e5's usual successor e6; a client that never read z gets none."""
    from ml.training.data import SuccessorCandidates

    gen = SuccessorCandidates(5, replay=3)
    for key in ("e4", "e5", "e6"):  # client 2 walks e4 e5 e6 twice, so e4 is e5's usual predecessor
        gen.after(key, 2)
    for key in ("e4", "e5", "e6"):
        gen.after(key, 2)
    for key in ("z", "e5", "e6", "e7"):  # client 1's walk from z starts at e5
        gen.after(key, 1)
    cands, flat = gen.after("z", 1)
    feats = np.array(flat).reshape(5, 2)
    assert cands == ["e5", "", "", "e4", "e6"]  # (the table already names e5: its replay slot stays empty)
    assert feats[:, 1].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert feats[3, 0] == pytest.approx(2 / 3) and feats[4, 0] == pytest.approx(1.0)
    cands, flat = gen.after("z", 3)  # a client that never read z
    feats = np.array(flat).reshape(5, 2)
    assert cands == ["e5", "", "", "", ""] and feats[2:, 1].sum() == 0
    with pytest.raises(ValueError):
        SuccessorCandidates(2, replay=3)


def test_models_saved_before_replay_slots_load_without_them(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained[0], old)
    doc = json.loads((old / "manifest.json").read_text())
    assert doc["config"]["replay_slots"] == 3
    del doc["config"]["replay_slots"]
    (old / "manifest.json").write_text(json.dumps(doc))
    assert load_model(old)[0].cfg.replay_slots == 0


def test_score_floor_keeps_weak_candidates_back() -> None:
    """With a floor, the ML arm offers no candidate scored under it, in both gate modes, so the
    simulator's token bucket keeps the budget; without one, it offers them all."""
    from ml.inference.arm import MLPredictor

    cands = [[("a", 0.6), ("b", 0.25), ("c", 0.05)]]
    conf = np.array([0.9], np.float32)
    for gate in (0.5, -1.0):
        for floor, want in ((0.0, ["a", "b", "c"]), (0.1, ["a", "b"]), (0.3, ["a"]), (0.7, [])):
            arm = MLPredictor.from_predictions(cands, conf, "none", gate, "", floor)
            arm.observe("x", 0.0, False, 0)
            assert [key for key, _ in arm.predict(8)] == want, (gate, floor)


BF16_FAILURE = bf16_failure("cpu")


@pytest.mark.parametrize(
    "precision",
    [
        "fp32",
        pytest.param(
            "bf16",
            marks=pytest.mark.skipif(
                BF16_FAILURE is not None, reason=f"the model does not run in bf16 on this CPU: {BF16_FAILURE}"
            ),
        ),
    ],
)
def test_successor_head_names_keys_outside_the_vocabulary(tmp_path: Path, precision: str) -> None:
    """A fixed cycle of 300 keys without numbers (no template can build them) and an 8-key
    vocabulary: the key head can name almost none of them, the successor head scores the keys seen
    to follow each one, so after the first pass the next key is predicted anyway. In fp32
    everywhere; in bf16 where the model runs in it."""
    rng = np.random.default_rng(1)
    cycle = ["obj-" + "".join(rng.choice(list("abcdefghij"), 8)) for _ in range(300)]
    log = walk(cycle, 6000, [0, 100, 200], rng, "cycle")
    torch.set_num_threads(2)
    metrics = train(
        log,
        tmp_path,
        small_training(epochs=6, max_keys=8, precision=precision),
    )
    assert metrics["precision"] == precision
    model = metrics["model"]
    assert model["top1"] > 0.9 and model["recall@10_within_10"] > 0.9, model
    assert model["model_top1"] > 0.9 and model["calibration_ece"] < 0.1


def test_fallback_and_policy_follow_the_cache_size(trained: tuple[Path, dict]) -> None:
    """The ML arm takes the fallback and policy its training replay found best at the cache size
    nearest the simulator's; a fallback or policy named by the user stays."""
    from ml.inference.arm import MLPredictor

    path, _ = trained
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["fallback_by_capacity"] = {"10": "pg@lru", "50": "markov@s3fifo", "100": "obl@s3fifo"}
    manifest["gate_by_capacity"] = {"10": "off", "50": 0.5, "100": 0.5}
    manifest_path.write_text(json.dumps(manifest))
    try:
        log = planted_log(300)
        arm = MLPredictor(str(path), log)
        for share, (name, policy) in (
            (12, ("pg", "lru")),
            (40, ("markov", "s3fifo")),
            (500, ("obl", "s3fifo")),
        ):
            arm.choose(share)
            assert (arm.fallback.name, arm.policy) == (name, policy)
        pinned = MLPredictor(str(path), log, fallback="frequency", policy="lru", min_confidence=0.7)
        pinned.choose(12)
        assert (pinned.fallback.name, pinned.policy, pinned.min_confidence) == ("frequency", "lru", 0.7)
        # Where training's replay found the model made things worse, the arm is its fallback alone.
        arm.choose(12)
        assert arm.min_confidence == float("inf")
        keys = log.keys()
        for t, key in enumerate(keys[:50]):
            arm.observe(key, float(t), False, 0)
        twin = MLPredictor(str(path), log, fallback="pg")
        for t, key in enumerate(keys[:50]):
            twin.fallback.observe(key, float(t), False, 0)
        assert arm.predict(10) == twin.fallback.predict(10) and arm.predict(10)
        assert arm._compute is not None  # the fallback alone: the model never ran
        arm.choose(50)
        assert arm.min_confidence == 0.5
        arm.observe(keys[50], 50.0, False, 0)
        arm.predict(10)
        assert arm._compute is None and len(arm.cands) == len(log)
        again = MLPredictor(str(path), log)  # another arm on the same trace: the same pass
        again.choose(50)
        again.observe(keys[0], 0.0, False, 0)
        again.predict(10)
        assert again.cands is arm.cands
    finally:
        manifest.pop("fallback_by_capacity")
        manifest.pop("gate_by_capacity")
        manifest_path.write_text(json.dumps(manifest))


def test_precision_choice() -> None:
    """bf16 autocast: asked for, or (auto) on a GPU or a CPU with native bf16, and only where the
    model runs in it: asking for bf16 where it does not is one clear error naming the way out; a
    misspelt precision is one too. (The probe is injected here; the real one is tested below.)"""
    from common.errors import ConfigError
    from ml.training.precision import native_bf16_cpu, use_bf16

    def runs(device: str) -> None:
        return None

    def fails(device: str) -> str:
        return "could not create a primitive descriptor for the LSTM forward propagation primitive."

    def never(device: str) -> str:
        raise AssertionError("fp32 needs no probe")

    assert use_bf16("auto", "cuda", runs) and use_bf16("auto", "cuda:1", runs)
    assert use_bf16("bf16", "cpu", runs) and not use_bf16("fp32", "cuda", never)
    assert use_bf16("auto", "cpu", runs) == native_bf16_cpu()
    assert not use_bf16("auto", "cuda", fails) and not use_bf16("auto", "cpu", fails)
    with pytest.raises(
        ConfigError,
        match=r"^--precision bf16: the model does not run in bf16 on cpu here .* use --precision fp32 or auto$",
    ):
        use_bf16("bf16", "cpu", fails)
    with pytest.raises(ConfigError, match="precision must be one of"):
        use_bf16("fp16", "cpu", never)


def test_bf16_probe_runs_the_model() -> None:
    """The probe is the model's own step, so it fails exactly where training would: with oneDNN
    held to AVX2 (as on a CPU without AVX-512: no bf16 LSTM kernel) it reports the failure (the
    CLI's answer to that is tested in tests/data/test_ml_cli.py); with no such limit it agrees
    with a bare LSTM step under bf16 autocast on this CPU."""
    import subprocess
    import sys

    avx2 = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = "from ml.training.precision import bf16_failure; print(repr(bf16_failure('cpu')))"
    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=avx2, timeout=120
    )
    assert probe.returncode == 0 and "primitive" in probe.stdout, probe
    lstm = torch.nn.LSTM(4, 4)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.rand(3, 1, 4))[0].sum().backward()
        here = None
    except RuntimeError as exc:
        here = str(exc)
    assert (bf16_failure("cpu") is None) == (here is None), (bf16_failure("cpu"), here)


def test_confidence_counts_keys_named_by_template_and_copy(tmp_path: Path) -> None:
    """Each client reads user:N:profile then user:N:orders for a random N among 3,000, with an
    8-key vocabulary: the orders key is named only by its template filled with the profile's
    number (copy head). The confidence head is taught that such a guess is right, so after a
    profile read it is sure, after an orders read (a random next user) it is not, and it is
    calibrated over both (taught only the key and successor heads' guesses, it said about 0 after
    profiles too, an error of about one half)."""
    log = profiles_log()
    torch.set_num_threads(2)
    metrics = train(
        log,
        tmp_path,
        small_training(epochs=16, max_keys=8, patience=16),
    )
    model = metrics["model"]
    assert model["top1"] > 0.45 and model["model_top1"] > 0.45, model  # every orders read, no profile
    assert model["calibration_ece"] < 0.1, model
    assert 0.35 < model["mean_confidence"] < 0.65, model


def test_confidence_target_ignores_a_key_head_sure_of_unk() -> None:
    """The key head's UNK (or PAD) is no guess: compose cannot name a key from it. A key head sure of
    UNK (0.97) must not outbid a template filled by the copy head (0.95 x 0.96) that names the next
    key (a game player's own state outside the vocabulary: taught as wrong before, confidence 0.08
    where the guess was right 97% of the time)."""
    from ml.models.lstm.model import confidence_target

    def logp(probs: list[float]) -> torch.Tensor:
        return torch.tensor([[probs]]).log()

    keys_unk = logp([0.0, 0.97, 0.02, 0.01])  # PAD, UNK, k2, k3
    tpl = logp([0.0, 0.01, 0.95, 0.04])  # PAD, UNK, t2, t3
    copy = torch.tensor([[[0.02, 0.96, 0.01, 0.01]]])  # slots 0-2, none

    def target(key_logp: torch.Tensor, next_key: int, next_copy: int, next_tpl: int = 2) -> bool:
        t = confidence_target(
            key_logp,
            tpl,
            copy,
            None,
            torch.tensor([[next_key]]),
            torch.tensor([[next_tpl]]),
            torch.tensor([[next_copy]]),
            None,
        )
        return bool(t.item())

    assert target(keys_unk, 1, 1)  # the filled template is right; UNK does not outbid it
    assert not target(keys_unk, 1, 0)  # the copy head's top read is the wrong one
    assert not target(keys_unk, 1, 1, next_tpl=3)  # the wrong template
    assert not target(logp([0.0, 0.3, 0.6, 0.1]), 2, 0)  # the filled guess (0.91) outbids k2 (0.6)
    assert target(logp([0.0, 0.0, 0.99, 0.01]), 2, 0)  # k2 (0.99) outbids the filled guess
    assert not target(logp([0.0, 0.0, 0.99, 0.01]), 3, 1)


class TickClock:
    """A clock for the time budget: every reading costs ``tick`` seconds (a training step reads it
    once, so a step "takes" a tick), and ``advance`` charges work done elsewhere."""

    def __init__(self, tick: float) -> None:
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def replays_cost_a_second(monkeypatch: pytest.MonkeyPatch) -> TickClock:
    """Two worker processes, and every replay charged one second of the tick clock (run for real,
    timed by the fake clock): the same budget arithmetic on any machine."""
    import ml.training.selection as selection
    import ml.training.train as training

    clock = TickClock(1.0)
    real = selection.replays_in_parallel

    def charged(fn: Any, jobs: list[Any], **shared: Any) -> list[Any]:
        clock.advance(math.ceil(len(jobs) / 2))
        return real(fn, jobs, **shared)

    for module in (training, selection):
        monkeypatch.setattr(module, "workers", lambda: 2)
    monkeypatch.setattr(selection, "replays_in_parallel", charged)
    return clock


def test_time_budget_holds_when_one_epoch_alone_would_exceed_it(
    tmp_path: Path, replays_cost_a_second: TickClock
) -> None:
    """Issue 18: an epoch of 38 steps at a second each, 35 s of work before the loop (29 of it
    replays) and a 70 s budget. The loop stops inside its first epoch, the replays after it shrink to what is
    left, the command ends within the budget, and the manifest says what was cut. (Before, the
    loop was checked between epochs only, and the replays after it never shrank.)"""
    torch.set_num_threads(2)
    cfg = dict(epochs=4, batch=1, length=32, lr=1e-2, progress=False, precision="fp32", patience=4)
    metrics = train(
        planted_log(1500), tmp_path / "m", TrainConfig(max_seconds=70, **cfg), clock=replays_cost_a_second
    )
    budget = metrics["time_budget"]
    steps_per_epoch = budget["steps_per_epoch"]
    assert steps_per_epoch > 30  # (one epoch alone would outlast the whole budget's room for it)
    assert len(metrics["history"]) == 1 and 0 < metrics["history"][0]["steps"] < steps_per_epoch
    assert budget["stopped_mid_epoch"] and budget["steps"] == metrics["history"][0]["steps"]
    assert budget["seconds"] <= 70 and budget["over_by"] == 0, budget
    assert budget["replays_after_loop"] == "one gate", (budget, metrics["seconds"])
    assert all(set(hits) == {"0.5"} for hits in metrics["gated_hit_ratios"].values())
    assert set(metrics["floor_by_share"].values()) == {0.0}  # (no floors tried)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["metrics"]["time_budget"] == budget


def test_time_budget_spent_before_training_still_gives_a_safe_model(
    tmp_path: Path, replays_cost_a_second: TickClock
) -> None:
    """A budget the replays before the loop already spent: one step (a model, not nothing), no
    replays after it, so the arm is its fallback at every size (never worse, and recorded so);
    with room, every epoch and every replay."""
    torch.set_num_threads(2)
    cfg = dict(epochs=3, batch=16, length=32, lr=1e-2, progress=False, precision="fp32", patience=4)
    spent = train(
        planted_log(1500), tmp_path / "spent", TrainConfig(max_seconds=5, **cfg), clock=replays_cost_a_second
    )
    assert spent["time_budget"]["steps"] == 1 and spent["time_budget"]["replays_after_loop"] == "none"
    assert spent["ranker_replays"].startswith("skipped: estimated"), spent["ranker_replays"]
    assert set(spent["gate_by_share"].values()) == {"off"}
    assert (tmp_path / "spent" / "manifest.json").exists()
    replays_cost_a_second.t = 0.0
    roomy = train(
        planted_log(1500),
        tmp_path / "roomy",
        TrainConfig(max_seconds=100_000, **cfg),
        clock=replays_cost_a_second,
    )
    assert len(roomy["history"]) == 3 and not roomy["time_budget"]["stopped_mid_epoch"]
    assert roomy["time_budget"]["replays_after_loop"] == "all"
    assert roomy["ranker_replays"] == "run"  # (before the loop: a tenth of the budget holds them)


def test_discount_gate_weighs_the_fallback_by_the_models_doubt() -> None:
    """Gate -2: the fallback's candidates are scored times one minus the model's confidence; gate
    -1 merges the two lists as they are."""
    from ml.inference.arm import DISCOUNT_GATE, MERGE_GATE, MLPredictor

    def arm(gate: float, confidence: float) -> list[tuple[str, float]]:
        cands: list[list[tuple[str, float]]] = [[], [], [("a", 0.6)]]
        predictor = MLPredictor.from_predictions(
            cands, np.array([0, 0, confidence], np.float32), "markov", gate
        )
        for key in ("x", "b", "x"):  # Markov learns that b follows x: score 1.0
            predictor.observe(key, 0.0, False)
        return predictor.predict(5)

    assert arm(MERGE_GATE, 0.9) == [("b", 1.0), ("a", 0.6)]
    assert arm(DISCOUNT_GATE, 0.9) == [("a", 0.6), ("b", pytest.approx(0.1))]
    assert arm(DISCOUNT_GATE, 0.2) == [("b", pytest.approx(0.8)), ("a", 0.6)]


def test_grown_vocabulary_puts_the_new_reads_first_and_keeps_what_fits() -> None:
    from ml.training.warmstart import grown_vocabulary

    old = Vocabulary(["a:1", "a:2", "a:3"], ["a:#"])
    grown = grown_vocabulary(old, ["b:1", "b:1", "b:2", "a:2"], max_keys=4, max_templates=8)
    assert grown.keys == [
        "b:1",
        "b:2",
        "a:2",
        "a:1",
    ]  # (the new reads by frequency, then the old, to the bound)
    assert grown.templates == ["b:#", "a:#"]


def test_carry_weights_moves_each_tokens_rows_to_its_new_place() -> None:
    from ml.models.lstm.model import LSTMConfig, NextKeyLSTM
    from ml.training.warmstart import TOKEN_ROWS, carry_weights

    old_vocab = Vocabulary(["a:1", "a:2", "a:3"], ["a:#"])
    new_vocab = Vocabulary(["b:1", "a:3", "a:1"], ["b:#", "a:#"])
    small = {"key_dim": 4, "template_dim": 2, "feature_dim": 2, "hidden": 8, "succ_dim": 4}
    torch.manual_seed(0)
    old = NextKeyLSTM(
        LSTMConfig(key_vocab=old_vocab.key_size, template_vocab=old_vocab.template_size, **small)
    )
    new = NextKeyLSTM(
        LSTMConfig(key_vocab=new_vocab.key_size, template_vocab=new_vocab.template_size, **small)
    )
    before = {k: v.clone() for k, v in new.state_dict().items()}
    assert carry_weights(old, old_vocab, new, new_vocab) == 2
    o, n = old.state_dict(), new.state_dict()
    for name, which in TOKEN_ROWS:
        if which == "keys":
            for key in ("a:1", "a:3"):
                assert torch.equal(n[name][new_vocab.key_token(key)], o[name][old_vocab.key_token(key)])
            # b:1 is new: its row keeps the new model's initialisation.
            assert torch.equal(n[name][new_vocab.key_token("b:1")], before[name][new_vocab.key_token("b:1")])
            assert torch.equal(n[name][UNK], o[name][UNK])
        else:
            assert torch.equal(
                n[name][new_vocab.template_index["a:#"]], o[name][old_vocab.template_index["a:#"]]
            )
    for name, tensor in n.items():
        if name not in dict(TOKEN_ROWS):
            assert torch.equal(tensor, o[name]), name
    wrong = NextKeyLSTM(
        LSTMConfig(
            key_vocab=new_vocab.key_size, template_vocab=new_vocab.template_size, **{**small, "hidden": 6}
        )
    )
    with pytest.raises(ValueError, match="shape"):
        carry_weights(old, old_vocab, wrong, new_vocab)


def test_the_arm_falls_back_to_the_learned_ranker_where_it_beats_every_heuristic(tmp_path: Path) -> None:
    """Phases alternate between scans (OBL's next number is right) and pairs n, n+1 followed by a
    learned jump (Markov's successor is right): no heuristic is right in both, the ranker over them
    is. Training replays the arm over the ranker and over the best heuristic at every size and
    keeps, per size, the fallback its arm hit most over (or the better fallback alone), and the arm
    in the simulator then hits at least as the ranker does, above every heuristic. (Before the
    ranker was among the fallbacks, training chose delta or Markov here.)"""
    from accesslog.log import AccessLog, make_table
    from prefetch.sim import simulate

    keys = phase_keys(40)
    log = AccessLog(make_table(np.arange(len(keys), dtype=float), keys, "GET", 1, "hand"), {"source": "hand"})
    train(
        log,
        tmp_path,
        TrainConfig(
            epochs=1, batch=16, length=32, lr=1e-2, progress=False, precision="fp32", ranker_replays="always"
        ),
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    metrics = manifest["metrics"]
    candidates = metrics["fallback_candidates_by_share"]
    assert all([f.split("@")[0] for f in c] == ["delta", "rank"] for c in candidates.values()), candidates
    for share, chosen in manifest["fallback_by_share"].items():
        alone = metrics["fallback_hit_ratios_by_share"][share]
        best_alone = max(alone[f] for f in candidates[share])
        if manifest["gate_by_share"][share] == "off":
            assert chosen.startswith("rank@") and alone[chosen] == best_alone, metrics
        else:
            gate = str(manifest["gate_by_share"][share])
            arms = metrics["gated_hit_ratios_by_fallback"][share]
            assert arms[chosen][gate] == max(a[gate] for a in arms.values()) >= best_alone, metrics
    report = simulate(
        log, "100", ["obl", "markov", "delta", "rank", f"ml:{tmp_path}"], with_belady=False, warmup=0.3
    )
    got = {a.prefetcher: a.hit_ratio for a in report.arms}
    assert got["ml"] > max(got["obl"], got["markov"], got["delta"]) + 0.1, got
    assert got["ml"] >= got["rank"] - 0.02, got


def test_ranker_replays_never_leaves_the_fallback_to_the_heuristics(tmp_path: Path) -> None:
    """The same log as above, with the ranker's replays turned off: training replays and chooses
    among the heuristics only, and says why the ranker is missing."""
    from accesslog.log import AccessLog, make_table

    keys = phase_keys(40)
    log = AccessLog(make_table(np.arange(len(keys), dtype=float), keys, "GET", 1, "hand"), {"source": "hand"})
    metrics = train(
        log,
        tmp_path,
        TrainConfig(
            epochs=1, batch=16, length=32, lr=1e-2, progress=False, precision="fp32", ranker_replays="never"
        ),
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "rank" not in {v.split("@")[0] for v in manifest["fallback_by_share"].values()}, manifest
    assert not any(r.startswith("rank@") for r in metrics["fallback_hit_ratios"]), metrics
    assert metrics["ranker_replays"] == "skipped: --ranker-replays never"
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="ranker_replays must be auto, always or never, got 'sometimes'"):
        train(log, tmp_path / "bad", TrainConfig(ranker_replays="sometimes"))


def _changed_walk() -> Any:
    """The planted cycle walked for 2,000 reads, then the same 12 keys in another order (each
    fifth key) for 4,000: a change of pattern the model never saw."""
    import pyarrow as pa

    from accesslog.log import AccessLog

    rng = np.random.default_rng(1)
    before = walk(CYCLE, 2000, [0, 1, 2, 3], rng, "before")
    after = walk([CYCLE[i * 5 % 12] for i in range(12)], 4000, [0, 1, 2, 3], rng, "after")
    table = pa.concat_tables([before.table, after.table.cast(before.table.schema)])
    table = table.set_column(table.schema.get_field_index("ts"), "ts", pa.array(np.arange(len(table)) * 0.01))
    return AccessLog(table, {"source": "changed"})


def _top1(cands: Any, enc: Any, first: int, end: int) -> float:
    """How often a read's first candidate is its client's next read, over the reads first..end-1."""
    from ml.training.data import stream_order

    order, nxt = stream_order(enc.client, np.arange(len(enc)))
    right = total = 0
    for j, i in enumerate(order.tolist()):
        if first <= i < end and nxt[j] >= 0:
            code = cands.codes[i, 0]
            total += 1
            right += int(code >= 0 and cands.names[code] == enc.names[enc.codes[order[nxt[j]]]])
    return right / total


def test_fine_tuning_while_replaying_recovers_after_a_change_of_pattern(trained: tuple[Path, dict]) -> None:
    """The model trained on the planted cycle replays a log whose clients change to another order of
    the same keys: frozen, its first candidate is the next read far less often after the change;
    fine-tuned every 500 reads on what it has seen, it names the new order. Before its first
    fine-tuning its candidates are the frozen model's, read for read."""
    from ml.inference.finetune import predict_finetuning
    from ml.training.data import replay_slots_of

    torch.manual_seed(0)
    log = _changed_walk()
    model, vocab, _ = load_model(trained[0])
    enc = encode(log, vocab, successors=model.cfg.successors, replay=replay_slots_of(model.cfg))
    frozen = predict_streams(model, vocab, enc, np.arange(len(enc)))[0]
    tuned, _, record = predict_finetuning(
        predict_streams, model, vocab, enc, 500, steps=20, length=32, batch=16
    )
    assert np.array_equal(tuned.codes[:500], frozen.codes[:500])
    assert np.array_equal(tuned.scores[:500], frozen.scores[:500])
    assert len(record["spans"]) == 11 and record["spans"][-1]["at"] == 5500
    n = len(enc)
    assert _top1(frozen, enc, 0, 2000) > 0.9 and _top1(frozen, enc, 3000, n) < 0.7
    assert _top1(tuned, enc, 3000, n) > 0.95, _top1(tuned, enc, 3000, n)
    assert _top1(tuned, enc, 0, 2000) > 0.9  # (fine-tuned on the cycle itself, it kept the cycle)


def test_the_simulators_ml_arm_fine_tunes_when_asked(trained: tuple[Path, dict]) -> None:
    """``ml:DIR::finetune=N`` in the simulator: the arm (the model alone: no fallback, no floor)
    hits more after the change than the frozen arm; bad fine-tuning parameters are one line."""
    from common.errors import ConfigError
    from prefetch.predictors import make_predictor
    from prefetch.sim import simulate

    torch.manual_seed(0)
    log = _changed_walk()
    alone = f"ml:{trained[0]}::fallback=none:min_confidence=0:min_score=0"
    tuned = f"{alone}:finetune=500"
    report = simulate(log, "6", [alone, tuned], with_belady=False, warmup=0.5)
    hits = {a.arm.partition("@")[0]: a.hit_ratio for a in report.arms}
    assert hits[tuned] > hits[alone] + 0.1, hits
    for bad in ("finetune=-1", "finetune=500:finetune_steps=0", "finetune=500:finetune_lr=0"):
        with pytest.raises(ConfigError, match="finetune"):
            make_predictor(f"{alone}:{bad}", log=log)
