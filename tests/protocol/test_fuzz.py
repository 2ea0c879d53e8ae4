"""The fuzz targets (fuzz/targets.py): every committed seed and every input a fuzzing run ever
failed on (fuzz/regressions/TARGET) replays through its target without a finding; each target also
runs briefly under atheris, coverage-guided, as CI's short run (the long runs' figures are in
bench/RESULTS.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import TARGETS

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


def inputs(kind: str) -> list[tuple[str, Path]]:
    return [
        (target, path)
        for target in TARGETS
        for path in sorted((FUZZ / kind / target).glob("*"))
        if (FUZZ / kind / target).is_dir()
    ]


@pytest.mark.parametrize(
    ("target", "path"), inputs("seeds") + inputs("regressions"), ids=lambda v: getattr(v, "name", v)
)
def test_seeds_and_regressions_replay_clean(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


def test_every_target_has_seeds() -> None:
    assert {t for t, _ in inputs("seeds")} == set(TARGETS)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzzing_run(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    runs = 300 if target in ("trace_readers", "model_manifest") else 5_000  # (those two write files)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuzz.run",
            target,
            str(tmp_path / "corpus"),
            f"-runs={runs}",
            "-max_len=512",
            "-timeout=30",
            "-rss_limit_mb=4096",  # (the fuzzer's own limit; a target that allocates past it fails)
            "-seed=1",  # (CI's short run is the same every time; the campaign's are not)
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(FUZZ.parent)},
    )
    found = done.stderr.find("Uncaught Python exception")
    assert done.returncode == 0, done.stderr[found : found + 3000] if found >= 0 else done.stderr[-3000:]
    assert f"Done {runs} runs" in done.stderr
