"""What recording costs the prediction engine's process per read: ``AccessRecorder.add`` for every
batch as the engine calls it, and the writes, over batches of single-key reads like the engine's
(256 reads of 50 clients, 10,000 keys), median of repeats.

    python -m bench.recordercost [--batches 400] [--repeats 5] [--rounds 3] [--tree DIR]

``--tree`` runs the same measurement on another checkout's recorder (``git worktree add DIR REV``):
each round measures this checkout's and then that one's, each in a process of its own, so that the
two are compared side by side; the figures are medians over every repeat of every round.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time


def measure(batches: int, repeats: int) -> list[float]:
    """Microseconds of ``add`` and ``flush`` per read, one figure per repeat."""
    from accesslog.recorder import AccessRecorder

    rng = random.Random(1)
    data = [
        (
            1.0 + i,
            [(rng.randrange(50), 0, [f"key:{rng.randrange(10_000)}".encode()], True) for _ in range(256)],
        )
        for i in range(batches)
    ]
    out = []
    with tempfile.TemporaryDirectory() as work:
        recorder = AccessRecorder(work, buffer_rows=1 << 30)
        for _ in range(repeats):
            start = time.perf_counter()
            for t, reads in data:
                recorder.add(t, reads)
            recorder.flush()
            out.append(1e6 * (time.perf_counter() - start) / (batches * 256))
        recorder.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recordercost", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", help="also measure this other checkout's recorder, side by side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    trees = {"this checkout": "", **({args.tree: args.tree} if args.tree else {})}
    got: dict[str, list[float]] = {name: [] for name in trees}
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from bench_recordercost import measure; "
        "print(' '.join(f'{v:.4f}' for v in measure(int(sys.argv[2]), int(sys.argv[3]))))"
    )
    with tempfile.TemporaryDirectory() as shim:  # (this file's measure, each tree's recorder)
        with open(__file__) as src, open(f"{shim}/bench_recordercost.py", "w") as dst:
            dst.write(src.read())
        for _ in range(args.rounds):
            for name, tree in trees.items():
                root = tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                done = subprocess.run(
                    [sys.executable, "-c", code, shim, str(args.batches), str(args.repeats)],
                    cwd=root,
                    env={**os.environ, "PYTHONPATH": root},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                got[name] += [float(v) for v in done.stdout.split()]
    for name, values in got.items():
        print(f"{name}: {statistics.median(values):.3f} us a read ({min(values):.3f}-{max(values):.3f})")
    if args.tree:
        ratio = statistics.median(got["this checkout"]) / statistics.median(got[args.tree])
        print(f"this checkout / {args.tree}: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
