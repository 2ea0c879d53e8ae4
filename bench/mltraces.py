"""Issues 6 and 21 on the shared real traces: train on the first 30% of a trace, then replay the whole
trace with that 30% as the simulator's warm-up (so no arm is scored on what the model saw), at 1%,
5%, 10%. The ML arm (the model over the fallback its training chose, the learned ranker among the
candidates) against the best heuristic, each under LRU and S3-FIFO.

    python -m bench.mltraces --trace ../shared/traces/cloudPhysicsIO.csv --format libcachesim-csv \
        --writes read
"""

from __future__ import annotations

import argparse
import tempfile

from accesslog.log import AccessLog
from accesslog.traces import read_trace
from ml.training.train import TrainConfig, train
from prefetch.sim import add_plain_arm, format_table, simulate

# The heuristics to beat, as bench.ranktraces names them (``rank``, the learned ranker, is among the
# ML arm's fallbacks, not here).
HEURISTICS = ["obl", "markov", "pg", "mithril", "frequency", "delta", "delta:min_accuracy=0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", required=True)
    ap.add_argument("--share", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--ml", default="", help="extra ML arm parameters, e.g. ::min_confidence=-1")
    ap.add_argument(
        "--ml-also",
        action="append",
        default=[],
        help="another ML arm over the same model, with these parameters (e.g. ::finetune=100000: "
        "fine-tuned while it replays), judged beside the first; repeatable",
    )
    ap.add_argument(
        "--policies",
        default="lru,s3fifo",
        help="eviction policies every arm runs under; the ML arm is judged under the one its training chose",
    )
    ap.add_argument("--policy", default="", help="one policy for every arm (the earlier runs' option)")
    ap.add_argument(
        "--writes",
        choices=("drop", "read"),
        default="drop",
        help="read: every access a read, as libCacheSim and bench.ranktraces replay block traces (training "
        "reads every access either way)",
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N accesses (0: all)")
    ap.add_argument("--heuristics", default=",".join(HEURISTICS), help="the heuristics to beat")
    args = ap.parse_args()
    policies = [args.policy] if args.policy else [p for p in args.policies.split(",") if p]
    log = read_trace(args.trace, args.format)
    if args.limit:
        log = AccessLog(log.table.slice(0, args.limit), log.meta)
    heuristics = [h for h in args.heuristics.split(",") if h]
    head = AccessLog(log.table.slice(0, int(args.share * len(log))), dict(log.meta))
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train(
            head,
            tmp,
            TrainConfig(epochs=args.epochs, batch=32, lr=5e-3, progress=False, max_seconds=args.max_seconds),
        )
        print(f"trained on {len(head):,} reads in {metrics['train_seconds']} s: {metrics['model']}")
        budget = metrics["time_budget"]
        print(
            f"fallback by share {metrics['fallback_by_share']}, ranker replays: {metrics['ranker_replays']}; "
            f"gate by share {metrics['gate_by_share']}; {budget['epochs']} epochs, {budget['seconds']} s, "
            f"replays after the loop: {budget['replays_after_loop']}"
        )
        for size in ("1%", "5%", "10%"):
            report = simulate(
                log,
                size,
                heuristics,
                policies=policies,
                warmup=args.share,
                with_belady=False,
                writes=args.writes,
            )
            if len(policies) == 1:
                add_plain_arm(report, log, "s3fifo" if policies[0] == "lru" else "lru")
            # The ML arm once, under the policy its training chose for this size (a single policy
            # given to simulate lets the arm take its own); then each variant's.
            mls = []
            for params in [args.ml, *args.ml_also]:
                (ml,) = [
                    a
                    for a in simulate(
                        log,
                        size,
                        [f"ml:{tmp}{params}"],
                        warmup=args.share,
                        with_belady=False,
                        writes=args.writes,
                    ).arms
                    if a.prefetcher == "ml"
                ]
                report.arms.append(ml)
                mls.append((params, ml))
            print(format_table(report))
            best = next(a for a in report.arms if a.arm == report.best_heuristic)
            lru = next(a for a in report.arms if a.prefetcher == "none" and a.policy == "lru")
            for params, ml in mls:
                variant = f" [{params}]" if params != args.ml else ""
                tuned = f", {ml.extra['finetunings']} fine-tunings" if "finetunings" in ml.extra else ""
                print(
                    f"ML{variant} (under {ml.policy}, fallback {ml.extra.get('fallback', '?')}{tuned}) "
                    f"{100 * ml.hit_ratio:.2f} vs best heuristic {best.arm} {100 * best.hit_ratio:.2f} "
                    f"({100 * (ml.hit_ratio - best.hit_ratio):+.2f} points), vs LRU {ml.hit_ratio / lru.hit_ratio:.2f}x, "
                    f"{ml.replayed / ml.seconds if ml.seconds else 0:,.0f} reads/s"
                )
            print()


if __name__ == "__main__":
    main()
