"""`predis train` and the ML arm of `predis sim`, end to end on a small log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from accesslog.generators import generate, parse_params  # noqa: E402
from accesslog.log import write_log  # noqa: E402
from ml.training.selection import REPLAY_SHARES  # noqa: E402

PREDIS = [sys.executable, "-m", "proxy.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PREDIS, *args], capture_output=True, text=True, timeout=600)


def test_train_then_simulate(tmp_path: Path) -> None:
    params = parse_params("ml_training", ["shuffle=fixed", "samples=500", "batch=16"])
    log = tmp_path / "fixed.parquet"
    write_log(generate("ml_training", 6000, seed=1, params=params), log)
    out = run(
        "train",
        str(log),
        "-o",
        str(tmp_path / "reg"),
        "--registry",
        "--epochs",
        "6",
        "--batch",
        "16",
        "--length",
        "32",
        "--ranker-replays",
        "always",  # (auto would too on this small log, but only as the clock estimates it)
        "--quiet",
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("predis train: ")  # (where the time went)
    summary = json.loads(out.stdout)
    assert (
        summary["model_dir"].endswith("v0001")
        and (tmp_path / "reg" / "current").read_text().strip() == "v0001"
    )
    assert set(summary["heuristics"]) == {"markov", "pg", "obl", "mithril", "delta"}
    manifest = json.loads((tmp_path / "reg" / "v0001" / "manifest.json").read_text())
    assert manifest["fallback"] == "markov", "a fixed order is Markov's best case"
    # The fallback comes with the eviction policy its replay did best under, both recorded.
    replays = summary["fallback_hit_ratios"]
    assert set(replays) == {
        f"{p}@{pol}"
        for p in ("none", "markov", "pg", "obl", "mithril", "frequency", "delta", "rank")
        for pol in ("lru", "s3fifo")
    }
    assert replays[f"markov@{manifest['policy']}"] == max(replays.values())
    sim = run(
        "sim",
        str(log),
        "--cache",
        "10%",
        "--prefetch",
        f"markov,ml:{tmp_path / 'reg'}",
        "--warmup",
        "0.5",
        "--json",
        "--no-belady",
    )
    assert sim.returncode == 0, sim.stderr
    (ml,) = [a for a in json.loads(sim.stdout)["runs"][0]["arms"] if a["prefetcher"] == "ml"]
    # The ML arm runs under the policy its training chose for the cache size nearest the run's (10%).
    by_size = manifest["fallback_by_capacity"]  # cache sizes in entries on the replayed window
    assert len(by_size) == len(REPLAY_SHARES) and set(manifest["gate_by_capacity"]) == set(by_size)
    assert all(g in ("off", 0.5, -1.0) for g in manifest["gate_by_capacity"].values())
    # The gate recorded is the best of the gated arm's replays, or off when none beat the fallback.
    for share, hits in summary["gated_hit_ratios"].items():
        fallback_hit = summary["fallback_hit_ratios_by_share"][share][manifest["fallback_by_share"][share]]
        chosen = manifest["gate_by_share"][share]
        if chosen == "off":
            assert max(hits.values()) < fallback_hit
        else:
            assert hits[str(chosen)] == max(hits.values()) >= fallback_hit
    policy = by_size[max(by_size, key=int)].split("@")[1]  # the run's 10% is nearest the largest
    assert ml["policy"] == policy
    assert ml["arm"] == f"ml:{tmp_path / 'reg'}" + ("" if policy == "lru" else "@s3fifo")
    assert 0 <= ml["hit_ratio"] <= 1 and ml["prefetches"] > 0


def test_bad_model_and_bad_flags(tmp_path: Path) -> None:
    log = tmp_path / "z.parquet"
    write_log(generate("zipfian", 2000, seed=1), log)
    out = run("sim", str(log), "--cache", "5%", "--prefetch", f"ml:{tmp_path / 'nothing'}")
    assert (
        out.returncode == 2
        and len(out.stderr.strip().splitlines()) == 1
        and "no such model directory" in out.stderr
    )
    out = run("train", str(log), "-o", str(tmp_path / "m"), "--split", "1.5")
    assert out.returncode == 2 and "--split" in out.stderr
    out = run("train", str(log), "-o", str(tmp_path / "m"), "--lr", "0")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--lr positive" in out.stderr


def test_train_bf16_where_the_model_cannot_run_in_it_is_one_line(tmp_path: Path) -> None:
    """Issue 18: on a CPU whose oneDNN has no bf16 LSTM kernel (held to AVX2 here, as an AMD
    EPYC without AVX-512 is), ``--precision bf16`` stops before any work with one line that
    says why and what to use instead; ``--precision auto`` trains there, in fp32."""
    import os

    log = tmp_path / "z.parquet"
    write_log(generate("zipfian", 3000, seed=1), log)
    avx2 = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}

    def train(precision: str, out: str) -> subprocess.CompletedProcess[str]:
        args = ["train", str(log), "-o", str(tmp_path / out), "--epochs", "1", "--quiet"]
        args += ["--ranker-replays", "never"]  # (the precision is what is tested, not the ranker)
        return subprocess.run(
            [*PREDIS, *args, "--precision", precision], capture_output=True, text=True, timeout=600, env=avx2
        )

    out = train("bf16", "m")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "does not run in bf16 on cpu" in lines[0] and "--precision fp32 or auto" in lines[0]
    assert not (tmp_path / "m").exists()
    out = train("auto", "m2")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "m2" / "metrics.json").read_text())["precision"] == "fp32"
