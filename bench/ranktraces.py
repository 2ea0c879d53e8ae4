"""The learned ranker (``rank``) against the best heuristic on the shared real traces (issue 21): the
first ``--share`` of a trace warms up the caches and the predictors and is not scored (the ranker
learns from it), the rest is judged, at 1%, 5% and 10%, every arm under each policy. Beside the
ranker that keeps learning, the same ranker frozen at the end of the warm-up (the "train on the
first 30%, then freeze" baseline).

    python -m bench.ranktraces --trace ../shared/traces/multi1.trace.gz --format lines [--policies lru,s3fifo]
"""

from __future__ import annotations

import argparse
import time

from accesslog.log import AccessLog
from accesslog.traces import read_trace
from prefetch.sim import simulate

HEURISTICS = ["obl", "markov", "pg", "mithril", "frequency", "delta", "delta:min_accuracy=0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", required=True)
    ap.add_argument("--share", type=float, default=0.3)
    ap.add_argument("--cache", default="1%,5%,10%")
    ap.add_argument("--policies", default="lru,s3fifo")
    ap.add_argument("--rank", default="rank", help="the ranker's spec (rank:param=value...)")
    ap.add_argument("--no-frozen", action="store_true", help="skip the frozen baseline")
    ap.add_argument("--heuristics", default=",".join(HEURISTICS), help="the heuristics to beat")
    ap.add_argument("--rank-policies", default="", help="the ranker's policies (default: --policies)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N accesses (0: all)")
    args = ap.parse_args()
    log = read_trace(args.trace, args.format)
    if args.limit:
        log = AccessLog(log.table.slice(0, args.limit), log.meta)
    warm = int(args.share * len(log))
    heuristics = [h for h in args.heuristics.split(",") if h]
    ranks = [args.rank]
    if not args.no_frozen:
        ranks.append(f"{args.rank}:freeze_after={warm}" if ":" in args.rank else f"rank:freeze_after={warm}")
    policies = [p for p in args.policies.split(",") if p]
    rank_policies = [p for p in args.rank_policies.split(",") if p] or policies
    print(
        f"{log.source}: {len(log):,} requests, judged after the first {args.share:.0%}; every access a "
        f"read; hit %, best of {', '.join(policies)} for each heuristic and of {', '.join(rank_policies)} "
        "for the ranker"
    )
    print("| cache | best heuristic | rank | rank - best | rank frozen | rank reads/s |")
    print("|---|---|---|---|---|---|")
    for size in args.cache.split(","):
        found = [
            simulate(log, size, arms, policies=ps, warmup=args.share, with_belady=False, writes="read").arms
            for arms, ps in ((heuristics, policies), (ranks, rank_policies))
        ]
        best: dict[str, tuple[float, str]] = {}
        speed = 0.0
        for a in found[0] + found[1]:
            spec, _, policy = a.arm.partition("@")
            if 100 * a.hit_ratio > best.get(spec, (-1.0, ""))[0]:
                best[spec] = (100 * a.hit_ratio, policy or policies[0])
            if spec == args.rank:
                speed = max(speed, a.requests_per_s)
        heur = max((v + (k,) for k, v in best.items() if k in ["none", *heuristics]), key=lambda v: v[0])
        rank = best[args.rank][0]
        frozen = next((v[0] for k, v in best.items() if "freeze_after" in k), float("nan"))
        print(
            f"| {size} | {heur[2]}@{heur[1]} {heur[0]:.2f} | {rank:.2f} | {rank - heur[0]:+.2f} | "
            f"{frozen:.2f} | {speed:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
