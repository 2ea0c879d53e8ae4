"""Retraining from recorded reads behind the promotion gate (ml.training.retrain), and the registry's
list and rollback: too little data keeps the current model; a candidate is promoted only past the
margin, with its gate figures in its manifest and every decision in decisions.jsonl; a deliberately
worse candidate (untrained weights) is refused by the gate; a rollback goes back a version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from accesslog.log import AccessLog  # noqa: E402
from accesslog.recorder import AccessRecorder  # noqa: E402
from ml.cli import model_main  # noqa: E402
from ml.registry import load_model, resolve, save_model, set_current  # noqa: E402
from ml.training.retrain import DECISIONS, RetrainConfig, gate, recorded_log, retrain_once  # noqa: E402
from ml.training.train import TrainConfig  # noqa: E402
from tests.helpers import planted_log  # noqa: E402


def recorded(directory: Path, log: AccessLog) -> None:
    """``log``'s reads written as a recording proxy's engine would have written them."""
    rec = AccessRecorder(directory, rotate_rows=1_000)
    keys, clients, ts = log.keys(), log.column("client").tolist(), log.timestamps().tolist()
    for key, client, t in zip(keys, clients, ts, strict=True):
        rec.add(t, [(client, 0, [key.encode()], False)])
    rec.close()


def decisions(registry: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (registry / DECISIONS).read_text().splitlines()]


def test_retrain_gate_and_rollback(tmp_path: Path, planted_model: Any, capsys: Any) -> None:
    registry, logs = tmp_path / "registry", tmp_path / "logs"
    shutil.copytree(planted_model, registry / "v0001")
    set_current(registry, registry / "v0001")
    recorded(logs, planted_log(4000))
    assert len(recorded_log(logs)) == 4000
    train = TrainConfig(
        max_seconds=120.0,
        epochs=3,
        max_keys=64,
        batch=16,
        length=32,
        lr=1e-2,
        precision="fp32",
        ranker_replays="never",
    )
    quick: dict[str, Any] = {"cache": "4", "train": train}

    # Too little data: no training, the current model stays.
    d = retrain_once(logs, registry, RetrainConfig(min_reads=10_000, **quick))
    assert (
        d["promote"] is False
        and d["reason"].startswith("too little data")
        and resolve(registry).name == "v0001"
    )

    # A candidate trained on the same reads, promoted only because the margin lets it (-1).
    d = retrain_once(logs, registry, RetrainConfig(min_reads=1_000, margin=-1.0, **quick))
    assert d["promote"] is True and d["version"] == "v0002" and resolve(registry).name == "v0002"
    assert (
        d["held_out_reads"] == 800
        and 0 < d["candidate_hit_ratio"] <= 1
        and d["current_hit_ratio"] is not None
    )
    manifest = json.loads((registry / "v0002" / "manifest.json").read_text())
    assert manifest["gate"]["candidate_hit_ratio"] == d["candidate_hit_ratio"]
    assert [x["promote"] for x in decisions(registry)] == [False, True]

    # A deliberately worse candidate: the current model's shape with untrained weights.
    model, vocab, _ = load_model(registry / "v0001")
    import torch

    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    save_model(model, vocab, tmp_path / "worse")
    held_out = AccessLog(recorded_log(logs).table.slice(3200), {})
    verdict = gate(tmp_path / "worse", resolve(registry), held_out, "4", margin=0.0)
    assert verdict["promote"] is False
    assert verdict["candidate_hit_ratio"] < verdict["current_hit_ratio"]

    # predis model list / rollback.
    assert model_main(["list", "--registry", str(registry)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("  v0001") and listing[1].startswith("* v0002") and "gate:" in listing[1]
    assert model_main(["rollback", "--registry", str(registry)]) == 0
    assert resolve(registry).name == "v0001" and decisions(registry)[-1]["rollback"] is True


def test_watch_rounds_on_new_reads_on_age_and_on_drift(tmp_path: Path, planted_model: Any) -> None:
    """--watch's triggers, with the rounds themselves stubbed (their training is tested above): new
    reads past --every-reads, and a drift alert of the proxy once enough reads came after it."""
    from ml.training.retrain import watch

    registry, logs = tmp_path / "registry", tmp_path / "logs"
    shutil.copytree(planted_model, registry / "v0001")
    set_current(registry, registry / "v0001")
    recorded(logs, planted_log(1_000))
    rounds: list[int] = []
    drifts = [0]
    steps = iter(range(100))

    def round_once(*_: Any) -> dict[str, Any]:
        rounds.append(next(steps))
        return {"promote": False}

    def tick(_: float) -> None:  # each check: 1,000 more reads recorded; the alert fires once
        step = next(steps)
        recorded(logs, planted_log(1_000))
        if step == 3:
            drifts[0] += 1

    decisions: list[dict[str, Any]] = []
    watch(
        logs,
        registry,
        RetrainConfig(),
        every_reads=10_000,  # (never reached here)
        max_age=0.0,
        interval=1.0,
        rounds=1,
        say=decisions.append,
        sleep=tick,
        drift=lambda: drifts[0],
        min_new_reads=2_000,
        round_once=round_once,
    )
    # The alert is seen at the check after step 3 (5,000 reads recorded); the round waits for 2,000
    # more, so it runs two checks later, at step 6.
    assert len(rounds) == 1 and decisions[0]["trigger"] == "drift"
    assert rounds[0] == 6


def pairs_log(first: str, second: str, pairs: int, seed: int) -> AccessLog:
    """Four clients, each reading ``first`` then ``second`` filled with the same random number."""
    import numpy as np

    from accesslog.log import make_table

    rng = np.random.default_rng(seed)
    keys, client = [], []
    for c in rng.integers(0, 4, pairs).tolist():
        n = int(rng.integers(3000))
        keys += [first.format(n), second.format(n)]
        client += [c, c]
    return AccessLog(
        make_table(np.arange(len(keys)) * 0.01, keys, "GET", 100, "pairs", client=np.array(client)), {}
    )


def test_fine_tuning_starts_from_the_current_model_and_learns_a_new_pattern_sooner(
    tmp_path: Path, profiles_model: Any
) -> None:
    """The profiles model (user:N:profile, then user:N:orders) fine-tuned on acct:N:login, then
    acct:N:prefs: its vocabulary grows by the new templates and keeps the old, and in two epochs its
    validation loss falls far below that of the same model trained from scratch as long (it has
    learnt already that the second key copies the first's number). retrain_once with fine_tune
    does the same and says so."""
    from ml.training.train import train

    new = pairs_log("acct:{}:login", "acct:{}:prefs", 1000, seed=7)
    quick = {
        "epochs": 2,
        "patience": 2,
        "batch": 16,
        "length": 32,
        "lr": 1e-2,
        "max_keys": 8,
        "precision": "fp32",
        "ranker_replays": "never",
    }
    tuned = train(
        new, tmp_path / "tuned", TrainConfig(progress=False, init_from=str(profiles_model), **quick)
    )
    scratch = train(new, tmp_path / "scratch", TrainConfig(progress=False, **quick))
    assert tuned["warm_start"]["from"] == str(profiles_model) and scratch["warm_start"] is None
    _, vocab, _ = load_model(tmp_path / "tuned")
    assert {"acct:#:login", "acct:#:prefs", "user:#:profile", "user:#:orders"} <= set(vocab.templates)
    assert tuned["history"][-1]["val_loss"] < 0.5 * scratch["history"][-1]["val_loss"]

    registry, logs = tmp_path / "registry", tmp_path / "logs"
    shutil.copytree(profiles_model, registry / "v0001")
    set_current(registry, registry / "v0001")
    recorded(logs, new)
    d = retrain_once(
        logs,
        registry,
        RetrainConfig(
            min_reads=1_000,
            margin=-1.0,
            cache="50",
            fine_tune=True,
            train=TrainConfig(progress=False, **quick),
        ),
    )
    assert d["mode"] == "fine-tune" and d["promote"] is True
    metrics = json.loads((registry / d["version"] / "metrics.json").read_text())
    assert metrics["warm_start"]["from"] == str(registry / "v0001")


def test_the_gate_warms_the_models_on_the_reads_before_the_held_out_ones(planted_model: Any) -> None:
    """As a live arm warms a swapped-in model's client states (and the tier fills) on its latest
    reads before serving, the gate replays reads before the held-out ones unscored: here the
    11 most recent keys of the planted cycle's 12 are then in the cache before the first scored
    read, and a key read once more before the cut misses one read less."""
    log = planted_log(2000)
    warm, held_out = AccessLog(log.table.slice(0, 1000), {}), AccessLog(log.table.slice(1000), {})
    cold = gate(planted_model, None, held_out, "11", margin=0.0)
    warmed = gate(planted_model, None, held_out, "11", margin=0.0, warm=warm)
    assert cold["warm_reads"] == 0 and warmed["warm_reads"] == 1000
    assert cold["held_out_reads"] == warmed["held_out_reads"] == 1000
    assert warmed["no_prefetch_hit_ratio"] > cold["no_prefetch_hit_ratio"]
