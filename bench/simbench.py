"""Simulator speed: requests/s of each arm (LRU with each prefetcher) against libCacheSim's Python
binding doing a per-request ``get()`` (reusing one Request, and with a new Request each time) and a
plain OrderedDict LRU loop, on the same trace, in one run.

    python -m bench.simbench [--trace FILE.parquet | --workload web] [--cache 5%] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

from prefetch.predictors import make_predictor
from prefetch.sim import libcachesim_lru, parse_capacity, replay

ARMS = ["none", "frequency", "obl", "markov", "pg", "mithril"]


def ordered_dict_lru(codes: list[int], capacity: int) -> int:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for k in codes:
        if k in cache:
            cache.move_to_end(k)
            hits += 1
        else:
            cache[k] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits


def libcachesim_new_request(codes: list[int], capacity: int) -> int:
    """The loop as libCacheSim's README writes it: a new Request object for every get()."""
    import libcachesim as lcs

    cache = lcs.LRU(cache_size=capacity)
    hits = 0
    for key in codes:
        req = lcs.Request()
        req.obj_id = key
        req.obj_size = 1
        hits += cache.get(req)
    return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", help="an access log (Parquet/CSV)")
    ap.add_argument("--workload", default="web", help="a generated workload when no --trace is given")
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--cache", default="5%")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.trace:
        from ml.data.log import read_log

        log = read_log(args.trace)
    else:
        from ml.data.generators import generate

        log = generate(args.workload, args.n, seed=1)
    codes, names = log.key_codes()
    keys = log.keys()
    code_list = codes.tolist()
    capacity = parse_capacity(args.cache, len(names))
    rates: dict[str, list[float]] = {}
    hits: dict[str, int] = {}
    for _ in range(args.repeats):
        # Every target once per repeat, back to back, so that machine noise hits them alike.
        import libcachesim as lcs

        lcs.LRU(cache_size=capacity)  # its first construction allocates the hash table: not timed twice
        t = time.perf_counter()
        hits["libcachesim LRU get()"] = libcachesim_lru(codes, capacity)
        rates.setdefault("libcachesim LRU get()", []).append(len(keys) / (time.perf_counter() - t))
        t = time.perf_counter()
        hits["libcachesim LRU get(), new Request each"] = libcachesim_new_request(code_list, capacity)
        rates.setdefault("libcachesim LRU get(), new Request each", []).append(
            len(keys) / (time.perf_counter() - t)
        )
        t = time.perf_counter()
        hits["OrderedDict LRU loop"] = ordered_dict_lru(code_list, capacity)
        rates.setdefault("OrderedDict LRU loop", []).append(len(keys) / (time.perf_counter() - t))
        for spec in ARMS:
            result = replay(keys, capacity, make_predictor(spec))
            rates.setdefault(f"predis sim LRU + {spec}", []).append(result.requests_per_s)
            hits[f"predis sim LRU + {spec}"] = result.hits
    base = statistics.median(rates["libcachesim LRU get()"])
    print(
        f"trace {log.source}: {len(keys):,} requests, {len(names):,} keys, cache {args.cache} = {capacity:,} entries, "
        f"median of {args.repeats}\n"
    )
    print("| replay | requests/s | vs libcachesim get() | hit ratio |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        r = statistics.median(values)
        print(f"| {name} | {r:,.0f} | {r / base:.2f}x | {hits[name] / len(keys):.4f} |")


if __name__ == "__main__":
    main()
