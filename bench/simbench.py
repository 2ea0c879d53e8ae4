"""Simulator speed: requests/s of each arm (LRU with each prefetcher) against libCacheSim's Python
binding doing a per-request ``get()`` (reusing one Request, and with a new Request each time) and a
plain OrderedDict LRU loop, on the same trace, in one run.

    python -m bench.simbench [--trace FILE.parquet | --workload web] [--cache 5%] [--repeats 3] [--floor pg,markov]

``--floor`` adds, for each named prefetcher, the same replay with that prefetcher's candidates
computed beforehand (its observe and predict cost nothing in the timed loop): the speed of the
replay's own work, the cache operations of the demand fills and prefetches through the proxy's
policy classes, which no faster predictor behind the same loop could beat.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

from prefetch.predictors import make_predictor
from prefetch.sim import CANDIDATES, libcachesim_lru, parse_capacity, replay

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


class Precomputed:
    """Replays a prefetcher's answers, recorded beforehand on the same trace (``record``)."""

    name = "precomputed"
    max_footprint = 0

    def __init__(self, answers: list[list[tuple[str, float]]]) -> None:
        self.answers = answers
        self.i = -1

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.i += 1

    def predict(self, k: int) -> list[tuple[str, float]]:
        return self.answers[self.i]

    def footprint(self) -> int:
        return 0


def record(spec: str, keys: list[str]) -> list[list[tuple[str, float]]]:
    """What ``spec`` predicts after each read (as the replay asks, for CANDIDATES keys). Exact for
    prefetchers that ignore hits (pg, markov, obl, frequency); Mithril learns from misses only."""
    if spec.split(":")[0] == "mithril":
        raise SystemExit(
            "--floor: mithril learns from the replay's misses, so its answers cannot be recorded beforehand"
        )
    p = make_predictor(spec)
    observe, predict = p.observe, p.predict
    out = []
    for i, key in enumerate(keys):
        observe(key, i, False, 0)
        out.append(predict(CANDIDATES))
    return out


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
    ap.add_argument("--floor", default="", help="prefetchers to replay with their answers precomputed")
    ap.add_argument("--arms", default=",".join(ARMS), help="the prefetchers to time")
    args = ap.parse_args()
    if args.trace:
        from accesslog.log import read_log

        log = read_log(args.trace)
    else:
        from accesslog.generators import generate

        log = generate(args.workload, args.n, seed=1)
    codes, names = log.key_codes()
    keys = log.keys()
    code_list = codes.tolist()
    capacity = parse_capacity(args.cache, len(names))
    floors = {spec: record(spec, keys) for spec in filter(None, args.floor.split(","))}
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
        for spec in args.arms.split(","):
            result = replay(keys, capacity, make_predictor(spec))
            rates.setdefault(f"predis sim LRU + {spec}", []).append(result.requests_per_s)
            hits[f"predis sim LRU + {spec}"] = result.hits
        for spec, answers in floors.items():
            # Same hits as the live arm's row: the recording is exact.
            result = replay(keys, capacity, Precomputed(answers))
            name = f"predis sim LRU + {spec}, answers precomputed (floor)"
            rates.setdefault(name, []).append(result.requests_per_s)
            hits[name] = result.hits
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
