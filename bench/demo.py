"""The demo behind `scripts/demo`: start Redis and two Predis proxies (hot tier on and off), drive
redis-benchmark through all three side by side, and print the figures and the tier's statistics.
Then the A/B story: generate a `web` workload, train the model on it and let the simulator pick
the best heuristic on it, start a proxy that splits the keys between the model and that heuristic,
replay another seed of the workload through it and print the A/B report with its significance, the
model's prediction latency and the simulator's figures for the same log.
"""

from __future__ import annotations

import argparse
import sys

from bench.loadtest import ProxyProcess, build_parser, compare, print_table
from bench.tierbench import populate
from proxy.embedded import EmbeddedRedis


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(prog="bash scripts/demo", description=__doc__.splitlines()[0])
    own.add_argument(
        "--quick",
        action="store_true",
        help="the same steps at smaller sizes (10,000 benchmark requests, an 8,000-access A/B, training "
        "without the learned ranker's replays): what the test runs",
    )
    quick = own.parse_args(argv).quick
    args = build_parser().parse_args(["--requests", "10000" if quick else "50000", "--repeats", "1"])
    with EmbeddedRedis() as upstream:
        print(f"started redis-server on port {upstream.port}; writing {args.keyspace} keys of 64 bytes")
        populate(upstream.port, args.keyspace)
        tiered = ProxyProcess(upstream.url, ["--hot-tier", "cpu"])
        plain = ProxyProcess(upstream.url, ["--hot-tier", "off"])
        print(f"started predis with the hot tier on port {tiered.port}, without it on port {plain.port}\n")
        try:
            targets = {"direct": upstream.port, "tier": tiered.port, "notier": plain.port}
            compare(targets, argparse.Namespace(**{**vars(args), "tests": "get"}), 1)  # warm the tier
            rows = []
            for pipeline in (1, 16):
                rows += compare(targets, args, pipeline)
            print(
                "redis-benchmark -c 50 -r 10000 -d 64: Redis directly, Predis with its tier, Predis without:\n"
            )
            print_table(rows, list(targets))
            stats = tiered.stats()
        finally:
            tiered.close()
            plain.close()
    print("\nPREDIS STATS of the proxy with the tier (redis-benchmark):")
    for key in (
        "commands_forwarded",
        "commands_local",
        "hot_tier_hits",
        "hot_tier_misses",
        "hot_tier_hit_ratio",
        "hot_tier_demand_fills",
        "hot_tier_invalidations_local",
        "hot_tier_invalidations_tracking",
        "hot_tier_entries",
        "hot_tier_bytes_used",
        "hot_tier_served_latency_p50_us",
        "forward_latency_p50_us",
        "upstream_errors",
    ):
        print(f"  {key}: {stats[key]}")
    ab_story(8_000 if quick else 30_000, ranker=not quick)
    return 0


def ab_story(accesses: int = 30_000, rate: float = 1_500.0, ranker: bool = True) -> None:
    """Train a model and pick the best heuristic offline on one seed of a ``web`` workload, then test
    the model live against that heuristic on another seed (one repeat of ``bench.liveab``).
    ``ranker``: training replays the learned ranker as a fallback where its budget allows (without
    them the quick run trains in about a third of the time)."""
    import json
    import subprocess
    import tempfile

    from accesslog.generators import generate
    from accesslog.log import write_log
    from bench.liveab import run_live, tier_bytes_for
    from prefetch.sim import simulate

    seen = generate("web", accesses, seed=1)
    live = generate("web", accesses, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        write_log(seen, f"{tmp}/web-seed1.parquet")
        print(
            f"\nA/B: training the model on a web workload (seed 1, {accesses:,} accesses, 3 epochs, at most 120 s)"
        )
        trained = subprocess.run(
            [sys.executable, "-m", "proxy.cli", "train", f"{tmp}/web-seed1.parquet", "-o", f"{tmp}/model"]
            + ["--epochs", "3", "--max-seconds", "120", "--quiet"]
            + ([] if ranker else ["--ranker-replays", "never"]),
            capture_output=True,
            text=True,
            check=True,
        )
        summary = json.loads(trained.stdout)
        print(f"  {trained.stderr.strip().splitlines()[-1]}")
        print(f"  top-1 next-key accuracy on its validation reads: {summary['model']['top1']:.3f}")
        report = simulate(seen, "5%", ["obl", "markov", "pg", "frequency"], with_belady=False)
        best = report.best_heuristic
        print(f"  the simulator's best heuristic on seed 1 at a 5% cache: {best}")
        tier_bytes = tier_bytes_for(live, 0.05)
        # The model's arm runs under the tier's eviction policy (LRU), as every live arm does.
        arms = f"ML=ml:{tmp}/model::policy=lru,{best.upper()}={best}"
        print(
            f"starting predis with --ab ML=ml:MODEL,{best.upper()}={best} and a {tier_bytes:,}-byte tier; "
            f"replaying seed 2 (never seen in training) at {rate:,.0f} requests/s\n"
        )
        path = f"{tmp}/web-seed2.parquet"
        write_log(live, path)
        result = run_live(path, tier_bytes, arms, rate)
        offline = simulate(live, "5%", [f"ml:{tmp}/model::policy=lru", best], with_belady=False)
    by_spec = {a.arm.partition("::")[0].partition("@")[0]: a for a in offline.arms}
    print("\nthe same log and cache size in the simulator (prefetches land at once, before the next read):")
    for arm in result["ab"]["arms"]:
        spec = arm["spec"].partition("::")[0]
        sim = by_spec.get(spec if not spec.startswith("ml:") else f"ml:{tmp}/model")
        if sim is not None:
            print(
                f"  {arm['name']}: live hit ratio {arm['hit_ratio']:.4f}, simulator {sim.hit_ratio:.4f}; "
                f"prediction latency p50 {arm['prediction_p50_us'] or 0:,.0f} us, p99 {arm['prediction_p99_us'] or 0:,.0f} us"
            )
    print(
        "  (live, the engine's prefetches land milliseconds after their read, and in this workload most "
        "predictable reads come within a millisecond of the read before them; what comes in time is read "
        "beside a miss: the hints, and the template rules the model taught the proxy. See bench/RESULTS.md, "
        "live against the simulator)"
    )


if __name__ == "__main__":
    sys.exit(main())
