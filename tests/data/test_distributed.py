"""Training over two processes (ml.training.distributed: DistributedDataParallel, gloo on the
CPU) takes the course one process takes on the same data: each process trains on half of every
step's batch and the gradients are averaged, so the epochs' losses match one process's."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from accesslog.log import write_log  # noqa: E402
from ml.training.launch import train_processes  # noqa: E402
from ml.training.train import train  # noqa: E402
from tests.helpers import planted_log, small_training  # noqa: E402


@pytest.mark.timeout(600)  # (a hang guard: two spawned processes import torch on a busy machine)
def test_two_gloo_processes_train_as_one_process_does(tmp_path: Path) -> None:
    log = planted_log(3000)
    path = tmp_path / "planted.parquet"
    write_log(log, path)
    # (no ranker replays: what is compared is the training loop; the replays after it are rank 0's)
    cfg = small_training(epochs=3, patience=10, max_keys=64)
    one = train(log, tmp_path / "one", cfg)
    two = train_processes(2, str(path), str(tmp_path / "two"), cfg)
    assert one["processes"] == 1 and two["processes"] == 2
    assert [h["steps"] for h in two["history"]] == [h["steps"] for h in one["history"]]
    for a, b in zip(one["history"], two["history"], strict=True):  # (half of every batch each)
        assert 0 <= 2 * b["rows"] - a["rows"] <= a["steps"]
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.02), (one["history"], two["history"])
    assert two["model"]["top1"] == pytest.approx(one["model"]["top1"], abs=0.02)
    assert (tmp_path / "two" / "manifest.json").exists()
