"""The prepared GPU script (bench/gpu_check.py), run as a CPU dry run: device time is 15 minutes a
task, so the script must not fail there for a reason a CPU run could have shown, and must need only
what the GPU image holds (it lacks redis-py, hiredis, structlog, zstandard and libcachesim)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MISSING_ON_GPU_IMAGE = ["redis", "hiredis", "structlog", "zstandard", "libcachesim"]

BLOCKER = f"""
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {MISSING_ON_GPU_IMAGE!r}:
            raise ImportError("not on the GPU image: " + name)
sys.meta_path.insert(0, _Block())
"""


def test_gpu_check_dry_run_on_the_cpu_without_the_packages_the_gpu_image_lacks(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)  # every Python the script starts loads it too
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(root)])}
    blocked = subprocess.run([sys.executable, "-c", "import structlog"], env=env, capture_output=True)
    assert blocked.returncode != 0, "the blocker must be in force for the check to mean anything"
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--out", str(out)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = (out / "gpu_check.txt").read_text()
    assert run.returncode == 0, report + run.stderr
    assert "failed sections: none" in report
    for figure in (
        "max abs difference 0.00e+00",  # torch features equal numpy's
        "us per read",  # incremental inference
        "sequences/s",  # training steps
        "train() on 8,000 gaming reads",
        "DeviceStore (numpy) gather of 1024",
    ):
        assert figure in report, figure


def test_gpu_check_reports_a_failed_section_and_goes_on(tmp_path: Path) -> None:
    """On a machine where torch sees no GPU, --device cuda fails its sections one by one, each with
    its error in the report, and the run exits non-zero: nothing is lost silently."""
    import pytest

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the failure path cannot be shown")
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cuda", "--quick", "--out", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = (tmp_path / "gpu_check.txt").read_text()
    assert run.returncode == 1
    assert "FAILED environment: RuntimeError: --device cuda but torch sees no GPU" in report
    assert "== hot-tier value store" in report and "failed sections: environment" in report
