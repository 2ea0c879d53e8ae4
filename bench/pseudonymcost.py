"""What recording keys as pseudonyms (``--access-log-salt``) costs the model: the same model trained
and judged on a workload's keys as they are and as the recorder's pseudonyms.

    python -m bench.pseudonymcost [--workload web] [--reads 30000] [--cache 5%] [--epochs 3]

Generates two seeds of the workload (one to train on, one to judge on, as issue 6's figures),
trains the model on the first (``predis train``'s code, ``--max-seconds`` each) and replays the
second in the simulator with the ML arm and the heuristics, once with the keys as they are and once
with every key replaced by its pseudonym under one salt (``accesslog.recorder.Pseudonymizer``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from accesslog.generators import generate
from accesslog.log import AccessLog
from accesslog.recorder import Pseudonymizer
from ml.training.train import TrainConfig, train
from prefetch.sim import simulate


def pseudonymized(log: AccessLog, p: Pseudonymizer) -> AccessLog:
    import pyarrow as pa

    keys = pa.array([p(k) for k in log.keys()], pa.string())  # noqa: SIM118 (an AccessLog, not a dict)
    table = log.table.set_column(log.table.schema.get_field_index("key"), "key", keys)
    return AccessLog(table, dict(log.meta))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pseudonymcost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workload", default="web")
    parser.add_argument("--reads", type=int, default=30_000)
    parser.add_argument("--cache", default="5%")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=240.0)
    args = parser.parse_args(argv)
    plain = {
        "train": generate(args.workload, args.reads, seed=1),
        "judge": generate(args.workload, args.reads, seed=2),
    }
    salt = Pseudonymizer(b"bench-salt")
    logs = {"keys as they are": plain, "pseudonyms": {k: pseudonymized(v, salt) for k, v in plain.items()}}
    print(
        f"{args.workload}, {args.reads:,} reads per seed, cache {args.cache}; hit % of each arm on the judged seed"
    )
    for name, pair in logs.items():
        with tempfile.TemporaryDirectory() as tmp:
            metrics = train(
                pair["train"],
                tmp,
                TrainConfig(epochs=args.epochs, max_seconds=args.max_seconds, progress=False),
            )
            report = simulate(
                pair["judge"],
                args.cache,
                ["markov", "pg", "obl", f"ml:{tmp}"],
                policies=("s3fifo",),
                with_belady=False,
            )
        arms = {a.prefetcher if a.prefetcher != "ml" else "ML": a.hit_ratio for a in report.arms}
        best = max((v, k) for k, v in arms.items() if k not in ("ML",))
        each = ", ".join(f"{k} {100 * v:.2f}" for k, v in arms.items() if k != "ML")
        print(
            f"{name:>17}: ML {100 * arms['ML']:.2f}, best heuristic {best[1]} {100 * best[0]:.2f} ({each}); "
            f"model top-1 {metrics['model']['top1']:.3f}, recall@10 within 10 {metrics['model']['recall@10_within_10']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
