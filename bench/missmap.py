"""Where an arm's misses are: hits, misses and first-read misses by key template, and how many of
the prefetches made after each template's reads were hit before eviction.

    python -m bench.missmap --workload gaming [--n 200000] [--seed 2] [--cache 5%] [--policy s3fifo] ARM...
    python -m bench.missmap --trace FILE.parquet --cache 5% ARM...

ARM is any ``predis sim`` prefetcher (``pg``, ``markov``, ``ml:MODEL_DIR``...). The replay follows
``prefetch.sim.replay``'s rules (token bucket, already-cached candidates free, the arm's own policy
for an ML arm) in a loop of its own that also keeps per-read outcomes, and checks that its hit count
equals ``replay``'s before it prints anything.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from ml.vocab import template_of
from prefetch.policies import make_policy
from prefetch.predictors import make_predictor
from prefetch.sim import CANDIDATES, parse_capacity, replay


def outcomes(
    keys: list[str], clients: list[int], capacity: int, predictor: Any, policy: str
) -> dict[str, Counter]:
    """Per template: "hit", "miss", "first" (a key's first read) and "used"/"wasted" prefetches
    (by the template of the read after which they were made)."""
    cache = make_policy(policy, capacity)
    present: set[str] = set()
    made_after: dict[str, str] = {}  # prefetched key not yet hit -> template of the read that triggered it
    seen: set[str] = set()
    out: dict[str, Counter] = {}
    tokens = 0.0
    for i, (key, client) in enumerate(zip(keys, clients, strict=True)):
        tpl = template_of(key)
        row = out.setdefault(tpl, Counter())
        hit = key in present
        if hit:
            cache.touch(key)
            row["hit"] += 1
            trigger = made_after.pop(key, None)
            if trigger is not None:
                out[trigger]["used"] += 1
        else:
            row["miss" if key in seen else "first"] += 1
            if len(present) >= capacity:
                _evict(cache, present, made_after, out)
            present.add(key)
            cache.insert(key, 1)
        seen.add(key)
        predictor.observe(key, float(i), hit, client)
        tokens = min(tokens + 1.0, 4.0)
        if tokens >= 1.0:
            for cand, _ in predictor.predict(CANDIDATES):
                if cand in present:
                    continue
                if len(present) >= capacity:
                    _evict(cache, present, made_after, out)
                present.add(cand)
                cache.insert(cand, 1)
                made_after[cand] = tpl
                tokens -= 1.0
                if tokens < 1.0:
                    break
    return out


def _evict(cache: Any, present: set[str], made_after: dict[str, str], out: dict[str, Counter]) -> None:
    victim = cache.victim()
    present.discard(victim)
    trigger = made_after.pop(victim, None)
    if trigger is not None:
        out[trigger]["wasted"] += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.missmap", description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--workload")
    source.add_argument("--trace")
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--cache", default="5%")
    ap.add_argument("--policy", default="s3fifo", help="eviction policy (an ML arm uses its model's own)")
    ap.add_argument("arms", nargs="+")
    args = ap.parse_args(argv)
    if args.trace:
        from accesslog.log import read_log

        log = read_log(args.trace)
    else:
        from accesslog.generators import generate, parse_params

        params = parse_params(args.workload, args.param) if args.param else None
        log = generate(args.workload, args.n, seed=args.seed, params=params)
    keys = log.keys()
    clients = log.clients().tolist()
    n = len(keys)
    capacity = parse_capacity(args.cache, len(set(keys)))
    print(f"{n:,} reads, {capacity:,} entries; shares of all reads, in %")
    for spec in args.arms:
        runs = []
        for _ in range(2):  # one replay here, one by prefetch.sim.replay, on fresh predictors
            predictor = make_predictor(spec, trace_keys=keys, log=log)
            if hasattr(predictor, "choose"):
                predictor.choose(capacity)
            runs.append((predictor, getattr(predictor, "policy", "") or args.policy))
        (mine, policy), (theirs, _) = runs
        table = outcomes(keys, clients, capacity, mine, policy)
        reference = replay(
            keys, capacity, theirs, policy=policy, times=[float(i) for i in range(n)], clients=clients
        )
        hits = sum(row["hit"] for row in table.values())
        if hits != reference.hits:
            print(
                f"{spec}: this replay's {hits} hits differ from prefetch.sim.replay's {reference.hits}",
                file=sys.stderr,
            )
            return 1
        print(f"\n{spec} under {policy}: hit {100 * hits / n:.2f}%")
        print(
            f"  {'template':24s} {'reads':>6s} {'hit':>6s} {'miss':>6s} {'first':>6s}  prefetches after: used wasted"
        )
        for tpl, row in sorted(
            table.items(), key=lambda kv: -sum(kv[1][o] for o in ("hit", "miss", "first"))
        ):
            reads = row["hit"] + row["miss"] + row["first"]
            print(
                f"  {tpl[:24]:24s} {100 * reads / n:6.2f} {100 * row['hit'] / n:6.2f} {100 * row['miss'] / n:6.2f} "
                f"{100 * row['first'] / n:6.2f}  {row['used']:>10,} {row['wasted']:>7,}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
