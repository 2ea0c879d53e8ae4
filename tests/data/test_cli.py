"""`predis gen` and `predis trace` as a user runs them: output files, reports, and one-line errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from accesslog.log import AccessLog, make_table, read_log, write_log

PREDIS = [sys.executable, "-m", "proxy.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PREDIS, *args], capture_output=True, text=True, timeout=120)


def test_gen_list_names_every_workload_and_its_parameters() -> None:
    out = run("gen", "--list")
    assert out.returncode == 0, out.stderr
    for name in ("zipfian", "temporal", "ml_training", "hft", "gaming", "web"):
        assert f"\n{name}: " in "\n" + out.stdout
    assert "alpha" in out.stdout and "shuffle" in out.stdout and "burstiness" in out.stdout


def test_gen_writes_parquet_and_csv_then_validates(tmp_path: Path) -> None:
    parquet, csv = tmp_path / "z.parquet", tmp_path / "z.csv"
    out = run("gen", "zipfian", "-n", "200_000", "--seed", "3", "-o", str(parquet), "--param", "alpha=1.0")
    assert out.returncode == 0, out.stderr
    assert run("gen", "zipfian", "-n", "2e5", "--seed", "3", "-o", str(csv)).returncode == 0
    a, b = read_log(parquet), read_log(csv)
    assert len(a) == 200_000 and a.table.equals(b.table) and a.meta == b.meta
    report = run("gen", "--validate", str(parquet), "--json", "--plot", str(tmp_path / "z.png"))
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    assert 0.70 <= figures["top20_share"] <= 0.90 and all(c["ok"] for c in figures["claims"])
    assert (tmp_path / "z.png").read_bytes()[:4] == b"\x89PNG"
    table = run("gen", "--validate", str(csv))
    assert "share to top 20% keys" in table.stdout and "claim top20_70_90" in table.stdout


def test_validate_fails_a_log_that_betrays_its_claims(tmp_path: Path) -> None:
    # Uniform traffic labelled as Zipf(1.0) must fail the zipfian claims, with exit status 1.
    n = 100_000
    keys = [f"object:{i}" for i in np.random.default_rng(0).integers(0, 10_000, size=n)]
    params = {"keys": 10_000, "alpha": 1.0, "noise": 0.0}
    log = AccessLog(
        make_table(np.arange(n) / 1000, keys, "GET", 1, "zipfian"),
        {"source": "zipfian", "generator": "zipfian", "params": params},
    )
    path = tmp_path / "fake.parquet"
    write_log(log, path)
    out = run("gen", "--validate", str(path))
    assert out.returncode == 1
    assert "FAIL" in out.stdout and "fails its generator's claim" in out.stderr


def test_trace_import_and_export(tmp_path: Path) -> None:
    src = tmp_path / "t.trace.gz"
    src.write_bytes(gzip.compress(b"5\n6\n5\n"))
    out = run("trace", "import", str(src), "--format", "lines", "-o", str(tmp_path / "t.parquet"))
    assert out.returncode == 0, out.stderr
    assert "synthetic clock" in out.stderr
    assert read_log(tmp_path / "t.parquet").keys() == ["5", "6", "5"]
    out = run("trace", "export", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "t.csv"))
    assert out.returncode == 0 and (tmp_path / "t.csv").read_text().splitlines()[1].startswith('"ts"')


def one_line_error(out: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], out.stderr


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    one_line_error(run("gen", "nosuch", "-o", str(tmp_path / "x.parquet")), "unknown workload 'nosuch'")
    one_line_error(
        run("gen", "zipfian", "--param", "alpha=high", "-o", str(tmp_path / "x.parquet")), "must be a number"
    )
    one_line_error(
        run("gen", "zipfian", "-n", "-3", "-o", str(tmp_path / "x.parquet")), "positive whole number"
    )
    one_line_error(run("gen", "zipfian"), "-o FILE is required")
    one_line_error(run("gen", "--validate", str(tmp_path / "absent.parquet")), "cannot read")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    one_line_error(run("gen", "--validate", str(junk)), "unreadable access log")
    cut = tmp_path / "cut.trace.gz"
    cut.write_bytes(gzip.compress(b"1\n" * 10_000)[:-30])
    one_line_error(
        run("trace", "import", str(cut), "--format", "lines", "-o", str(tmp_path / "o.parquet")), "truncated"
    )
    assert not (tmp_path / "o.parquet").exists(), "a failed import leaves no half-written log"
    one_line_error(
        run("trace", "import", str(cut), "--format", "bogus", "-o", str(tmp_path / "o.parquet")),
        "invalid choice",
    )
