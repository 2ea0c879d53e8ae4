"""A fuzzing campaign: every target in turn under atheris for ``--seconds``, at a low CPU
priority; prints one row per target (runs, executions a second, coverage edges and features
reached, corpus size, findings) as the results page records them.

    python -m fuzz.campaign [--seconds 600] [--targets a,b] [--corpus DIR]

A finding leaves its input as ``crash-*`` (or ``timeout-*``, ``oom-*``) in ``--corpus``'s parent
and is counted; the campaign goes on with the next target.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from fuzz.targets import TARGETS

DONE = re.compile(rb"Done (\d+) runs in (\d+) second")
COVERAGE = re.compile(rb"cov: (\d+) ft: (\d+) corp: (\d+)")
STATUS = re.compile(rb"^#(\d+)\s", re.MULTILINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.campaign", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--corpus", default="fuzz-corpus", help="corpora grow here, one directory a target")
    args = parser.parse_args(argv)
    root = Path(args.corpus)
    root.mkdir(parents=True, exist_ok=True)
    print("| target | seconds | runs | runs/s | coverage edges | features | corpus | findings |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.targets.split(","):
        before = set(root.glob("crash-*")) | set(root.glob("timeout-*")) | set(root.glob("oom-*"))
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fuzz.run",
                name,
                str(root / name),
                f"-max_total_time={args.seconds}",
                "-max_len=4096",
                "-timeout=30",
                "-rss_limit_mb=4096",
                "-print_final_stats=1",
            ],  # fmt: skip
            cwd=root,
            capture_output=True,
            preexec_fn=lambda: os.nice(10),
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        seconds = time.monotonic() - started
        runs = DONE.findall(done.stderr)
        cov = COVERAGE.findall(done.stderr)
        after = set(root.glob("crash-*")) | set(root.glob("timeout-*")) | set(root.glob("oom-*"))
        # (A run stopped by a finding prints no "Done": its last status line says how far it got.)
        status = STATUS.findall(done.stderr)
        n_runs = int(runs[-1][0]) if runs else int(status[-1]) if status else 0
        edges, features, corpus = (int(x) for x in cov[-1]) if cov else (0, 0, 0)
        # Each finding leaves its input; a run that failed and left none is one more.
        findings = len(after - before) or (1 if done.returncode and not runs else 0)
        print(
            f"| {name} | {seconds:.0f} | {n_runs:,} | {n_runs / max(seconds, 1):,.0f} | {edges} | {features} "
            f"| {corpus} | {findings} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
