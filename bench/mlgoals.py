"""The model against the best heuristic on a workload generated with another seed than the model's
training log, at the same cache sizes and prefetch budget (issue 6's miss-ratio goals, and issue 21's
"+20% relative hit ratio over the best heuristic at 1% and 5%").

    python -m bench.mlgoals --workload web --model models/web [--param K=V ...] [--n 200000]
        [--seed 2] [--cache 1%,5%] [--rank]

Every arm runs under LRU and S3-FIFO. The ML arm judged is the one under the policy its training
chose (the manifest's); the best heuristic is the best of none, frequency, OBL, delta, Markov, PG
and Mithril under either policy. ``--rank`` adds the learned ranker over the heuristics' candidates
(``rank``, learning as it replays) and the ranker with the model's candidates among its sources
(``ml:MODEL::rank=1``), both judged against the same heuristics. ``--bound`` adds the oracle that
knows each client's next reads but not which client reads next (``oracle:own_client=1``): the
most a predictor that follows each client's stream could reach.
"""

from __future__ import annotations

import argparse

from accesslog.generators import generate, parse_params
from prefetch.sim import ArmResult, add_plain_arm, format_table, simulate

HEURISTICS = ["frequency", "obl", "delta", "markov", "pg", "mithril"]


def relative_line(name: str, arm: ArmResult, best: ArmResult) -> str:
    """One arm against the best heuristic: hit ratios, the relative gain in hit ratio, the miss ratios' ratio."""
    gain = arm.hit_ratio / best.hit_ratio - 1 if best.hit_ratio else float("inf")
    return (
        f"{name} ({arm.arm}): hit {100 * arm.hit_ratio:.2f}% vs best heuristic ({best.arm}) "
        f"{100 * best.hit_ratio:.2f}%: {100 * gain:+.1f}% relative, "
        f"{100 * (arm.hit_ratio - best.hit_ratio):+.2f} points; miss ratio {arm.miss_ratio / best.miss_ratio:.3f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--cache", default="5%", help="cache sizes, comma-separated (1%%,5%%)")
    ap.add_argument("--ml", default="", help="extra ML arm parameters, e.g. ::min_confidence=-1")
    ap.add_argument(
        "--rank", action="store_true", help="also the ranker, alone and with the model as a source"
    )
    ap.add_argument("--bound", action="store_true", help="also the per-client oracle, an upper bound")
    ap.add_argument(
        "--policies",
        default="lru,s3fifo",
        help="eviction policies every arm runs under (lru alone: the ML arm under its trained policy, plain S3-FIFO beside)",
    )
    args = ap.parse_args()
    params = parse_params(args.workload, args.param) if args.param else None
    log = generate(args.workload, args.n, seed=args.seed, params=params)
    ml_spec = f"ml:{args.model}{args.ml}"
    learned = [ml_spec, *(["rank", f"ml:{args.model}::rank=1"] if args.rank else [])]
    bound = ["oracle:own_client=1"] if args.bound else []
    policies = [p for p in args.policies.split(",") if p]
    summary = []
    for cache in [c for c in args.cache.split(",") if c]:
        report = simulate(log, cache, [*HEURISTICS, *learned, *bound], policies=policies, with_belady=False)
        if policies == ["lru"]:
            add_plain_arm(report, log, "s3fifo")
        print(format_table(report))
        base = [a for a in report.arms if a.arm.split("@")[0] in ("none", *HEURISTICS)]
        best = max(base, key=lambda a: a.hit_ratio)
        # With several policies every arm runs under each; the model arm judged is the one under
        # the policy its training chose (the manifest's).
        mls = [a for a in report.arms if a.arm.split("@")[0] == ml_spec]
        ml = next((a for a in mls if a.policy == a.extra.get("chosen_policy")), mls[0])
        lines = [relative_line("model", ml, best)]
        for spec in learned[1:]:
            ranked = [a for a in report.arms if a.arm.split("@")[0] == spec]
            lines.append(relative_line(spec, max(ranked, key=lambda a: a.hit_ratio), best))
        for spec in bound:
            oracles = [a for a in report.arms if a.arm.split("@")[0] == spec]
            lines.append(relative_line("bound", max(oracles, key=lambda a: a.hit_ratio), best))
        summary.append(f"cache {cache}:\n  " + "\n  ".join(lines))
    print(
        f"\n{args.workload} {' '.join(args.param)} (seed {args.seed}, {args.n:,} accesses), model {args.model}:"
    )
    print("\n".join(summary))


if __name__ == "__main__":
    main()
