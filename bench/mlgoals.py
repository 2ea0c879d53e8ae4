"""Issue 6's simulator goals: the ML arm against the best heuristic on a workload generated with
another seed than the model's training log, at the same cache size and prefetch budget.

    python -m bench.mlgoals --workload web --model models/web [--n 200000] [--seed 2] [--cache 5%]
"""

from __future__ import annotations

import argparse

from accesslog.generators import generate, parse_params
from prefetch.sim import add_plain_arm, format_table, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--cache", default="5%")
    ap.add_argument("--ml", default="", help="extra ML arm parameters, e.g. ::min_confidence=-1")
    ap.add_argument(
        "--policies",
        default="lru,s3fifo",
        help="eviction policies every arm runs under (lru alone: the ML arm under its trained policy, plain S3-FIFO beside)",
    )
    args = ap.parse_args()
    params = parse_params(args.workload, args.param) if args.param else None
    log = generate(args.workload, args.n, seed=args.seed, params=params)
    arms = ["frequency", "obl", "markov", "pg", "mithril", f"ml:{args.model}{args.ml}"]
    policies = [p for p in args.policies.split(",") if p]
    report = simulate(log, args.cache, arms, policies=policies, with_belady=False)
    if policies == ["lru"]:
        add_plain_arm(report, log, "s3fifo")
    print(format_table(report))
    # With several policies every arm runs under each; the ML arm judged is the one under the
    # policy its training chose (the manifest's), against the best heuristic under any policy.
    mls = [a for a in report.arms if a.prefetcher == "ml"]
    ml = next((a for a in mls if a.policy == a.extra.get("chosen_policy")), mls[0])
    best = next(a for a in report.arms if a.arm == report.best_heuristic)
    print(
        f"\nML ({ml.arm}) miss ratio {100 * ml.miss_ratio:.2f}% vs best heuristic ({best.arm}) {100 * best.miss_ratio:.2f}%: "
        f"{ml.miss_ratio / best.miss_ratio:.3f}x; hit ratio {100 * ml.hit_ratio:.2f} vs {100 * best.hit_ratio:.2f} "
        f"({100 * (ml.hit_ratio - best.hit_ratio):+.2f} points)"
    )


if __name__ == "__main__":
    main()
