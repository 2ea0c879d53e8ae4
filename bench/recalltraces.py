"""Recall@10 within the next 10 reads on real traces (issue 21's accuracy goal), beside the
hindsight first-order bound that ``predis gen --validate`` reports.

    python -m bench.recalltraces --trace ../shared/traces/multi1.trace.gz --format lines \\
        [--predictors rank,markov,pg,obl,mithril,delta] [--share 0.3] [--limit N]

The goal reads: at least 60% on every real trace whose hindsight bound is above 60%. Each
predictor runs over the whole trace, observing every access as a read (as ``bench.ranktraces``
replays them). After each read it is asked for its 10 best next keys. A read counts as recalled
when its key was among the 10 named after one of its client's previous 10 reads: a prefetch made
then would have covered it (training's metric, ``ml.training.evaluate``). Reads are judged after
the first ``--share`` (the ranker learns from the rest too, as it does while replaying). The hit flag
a predictor observes comes from an LRU holding 5% of the trace's keys, with no prefetching: this
is the predictor's accuracy, not a cache's hit ratio. The hindsight bound is the best accuracy of
any fixed map from a key to one successor, chosen knowing the whole trace: a top-1 figure.
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict, deque

from accesslog.traces import read_trace
from accesslog.validation import markov_oracle_top1
from prefetch.predictors import make_predictor

K, WINDOW = 10, 10


def recall(
    spec: str, keys: list[str], clients: list[int], ts: list[float], warm: int, lru: int
) -> tuple[float, float]:
    """(recall@10 within 10 over the reads from ``warm`` on, reads per second)."""
    predictor = make_predictor(spec)
    cache: OrderedDict[str, None] = OrderedDict()
    recent: dict[int, deque[set[str]]] = {}
    recalled = counted = 0
    started = time.perf_counter()
    for i, (key, client, t) in enumerate(zip(keys, clients, ts, strict=True)):
        sets = recent.get(client)
        if sets is None:
            sets = recent[client] = deque(maxlen=WINDOW)
        if i >= warm:
            counted += 1
            recalled += any(key in named for named in sets)
        hit = key in cache
        if hit:
            cache.move_to_end(key)
        else:
            cache[key] = None
            if len(cache) > lru:
                cache.popitem(last=False)
        predictor.observe(key, t, hit, client)
        sets.append({name for name, _ in predictor.predict(K)})
    seconds = time.perf_counter() - started
    return recalled / max(1, counted), len(keys) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", required=True)
    ap.add_argument("--predictors", default="rank,markov,pg,obl,mithril,delta,delta:min_accuracy=0")
    ap.add_argument("--share", type=float, default=0.3)
    ap.add_argument("--limit", type=int, default=0, help="only the first N accesses (0: all)")
    args = ap.parse_args()
    log = read_trace(args.trace, args.format)
    codes, _ = log.key_codes()
    keys, clients, ts = log.keys(), log.clients().tolist(), log.timestamps().astype(float).tolist()
    if args.limit:
        codes, keys, clients, ts = (
            codes[: args.limit],
            keys[: args.limit],
            clients[: args.limit],
            ts[: args.limit],
        )
    warm = int(args.share * len(keys))
    bound = markov_oracle_top1(codes)
    lru = max(16, len(set(keys)) // 20)
    print(
        f"{log.source}: {len(keys):,} accesses, judged after the first {args.share:.0%}; hindsight "
        f"first-order bound (top-1) {100 * bound:.1f}%"
    )
    print("| predictor | recall@10 within 10 reads | reads/s |")
    print("|---|---|---|")
    for spec in args.predictors.split(","):
        value, speed = recall(spec, keys, clients, ts, warm, lru)
        print(f"| {spec} | {100 * value:.1f}% | {speed:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
