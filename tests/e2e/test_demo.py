"""The main job a new user runs (`bash scripts/demo`, that is `python -m bench.demo`): it must
run to its end. It broke once when the load run it shares with bench.loadtest gained a flag."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)  # (a minute or two; past the suite's 120 s on a slow machine)
@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark is not installed")
def test_demo_runs_to_its_summary() -> None:
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        # (--quick: every step of the main job at smaller sizes, about a third of its time)
        [sys.executable, "-m", "bench.demo", "--quick"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "PREDIS STATS of the proxy with the tier" in run.stdout
    assert "hot_tier_hits:" in run.stdout and "upstream_errors: 0" in run.stdout
    # The A/B story: a model trained, a live experiment of it against the best heuristic, its
    # report and its significance, and the simulator's figures beside the live ones.
    assert "top-1 next-key accuracy" in run.stdout and "predis train:" in run.stdout
    assert "A/B test:" in run.stdout and "chi-square p" in run.stdout
    (ml,) = [line for line in run.stdout.splitlines() if line.strip().startswith("ML: live hit ratio")]
    assert "simulator" in ml and "prediction latency p50" in ml
