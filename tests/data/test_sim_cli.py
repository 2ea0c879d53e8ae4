"""`predis sim` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from accesslog.generators import generate
from accesslog.log import write_log
from prefetch.sim import log_writes

PREDIS = [sys.executable, "-m", "proxy.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PREDIS, *args], capture_output=True, text=True, timeout=300)


def test_sim_table_json_and_plot(tmp_path: Path) -> None:
    path = tmp_path / "g.parquet"
    log = generate("gaming", 20_000, seed=3)
    write_log(log, path)
    out = run(
        "sim",
        str(path),
        "--cache",
        "2%,5%",
        "--prefetch",
        "markov,obl",
        "--policy",
        "lru,s3fifo",
        "--warmup",
        "0.1",
    )
    assert out.returncode == 0, out.stderr
    assert "best heuristic" in out.stdout and "markov@s3fifo" in out.stdout and "belady" in out.stdout
    # the header counts the reads scored after the 10% warm-up (gaming's writes are not scored)
    scored = int(out.stdout.split(" reads scored")[0].rsplit("(", 1)[1].replace(",", ""))
    assert scored == int((~log_writes(log)[2_000:]).sum())
    out = run(
        "sim", str(path), "--cache", "5%", "--prefetch", "markov", "--json", "--plot", str(tmp_path / "plots")
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (single,) = doc["runs"]
    arms = {a["arm"]: a for a in single["arms"]}
    assert set(arms) == {"none", "markov", "belady"} and single["requests"] == 20_000
    assert 0 < arms["markov"]["hit_ratio"] <= 1 and arms["markov"]["prefetches"] > 0
    assert next((tmp_path / "plots").glob("*.png")).read_bytes()[:4] == b"\x89PNG"


def test_sim_reads_a_raw_trace_with_format(tmp_path: Path) -> None:
    raw = tmp_path / "t.trace"
    raw.write_text("\n".join(str(i % 50) for i in range(2000)) + "\n")
    out = run("sim", str(raw), "--format", "lines", "--cache", "10", "--prefetch", "obl")
    assert out.returncode == 0, out.stderr
    assert "obl" in out.stdout


def test_sim_bad_inputs_exit_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "g.parquet"
    write_log(generate("zipfian", 2000, seed=1), path)
    for args, fragment in [
        (["--cache", "5%", "--prefetch", "tarot"], "unknown prefetcher 'tarot'"),
        (["--cache", "0"], "at least 1"),
        (["--cache", "100%"], "not smaller than the trace"),
        (["--cache", "5%", "--policy", "fifo"], "unknown eviction policy"),
    ]:
        out = run("sim", str(path), *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], out.stderr
    empty = tmp_path / "empty.trace"
    empty.write_text("")
    out = run("sim", str(empty), "--format", "lines", "--cache", "1")
    assert out.returncode == 2 and "holds no requests" in out.stderr
