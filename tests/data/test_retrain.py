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
        max_seconds=120.0, epochs=3, max_keys=64, batch=16, length=32, lr=1e-2, precision="fp32"
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
