"""Hot-tier load run: redis-benchmark GET directly, through Predis with the tier, and through Predis
without it, side by side in one run.

    python -m bench.tierbench [--requests N] [--repeats R] [--keyspace K]

Two scenarios:
* hit path: K keys of 64 bytes that all fit the tier (64 MB), warmed by one unrecorded pass, so
  GETs are served from the proxy's memory;
* miss path: the same keys with a tier of 64 KB, so nearly every GET misses and asks for a fill.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import redis

from bench.loadtest import ProxyProcess, median_run, redis_benchmark
from proxy.embedded import EmbeddedRedis


def populate(port: int, keyspace: int) -> None:
    client = redis.Redis(port=port)
    with client.pipeline(transaction=False) as pipe:
        for i in range(keyspace):
            pipe.set(b"key:%012d" % i, b"v" * 64)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()


def scenario(
    name: str, targets: dict[str, int], args: argparse.Namespace, proxies: dict[str, ProxyProcess]
) -> list[dict[str, Any]]:
    rows = []
    for pipeline in (1, 16):
        # (the dict reference server answers unpipelined GETs only)
        active = {t: p for t, p in targets.items() if pipeline == 1 or t != "dict"}
        for port in active.values():  # warm-up pass, not recorded: fills the tier
            redis_benchmark(port, "get", args.requests * pipeline, args.clients, pipeline, args.keyspace)
        runs: dict[str, list[Any]] = {t: [] for t in active}
        for _ in range(args.repeats):
            for target, port in active.items():
                runs[target] += redis_benchmark(
                    port, "get", args.requests * pipeline, args.clients, pipeline, args.keyspace
                )
        row: dict[str, Any] = {"scenario": name, "pipeline": pipeline}
        for target in active:
            m = median_run(runs[target])
            row[f"{target}_rps"] = round(m.rps)
            row[f"{target}_p50_ms"] = m.p50_ms
            row[f"{target}_p99_ms"] = m.p99_ms
            if target != "direct":
                ratios = [r.rps / d.rps for d, r in zip(runs["direct"], runs[target], strict=True)]
                row[f"{target}_ratio"] = round(statistics.median(ratios), 3)
        for target, proxy in proxies.items():
            figures = proxy.stats()
            row[f"{target}_hit_ratio"] = figures.get("hot_tier_hit_ratio", 0.0)
            row[f"{target}_refreshes"] = figures.get("hot_tier_refreshes", 0)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tierbench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--keyspace", type=int, default=10_000)
    parser.add_argument(
        "--max-staleness",
        type=float,
        default=0.0,
        help="the tier's hot_tier_max_staleness (default: Predis's)",
    )
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with EmbeddedRedis() as upstream:
        populate(upstream.port, args.keyspace)
        for name, tier_args in (
            ("hit", ["--hot-tier-bytes", str(64 << 20)]),
            ("miss", ["--hot-tier-bytes", str(64 << 10)]),
        ):
            if args.max_staleness:
                tier_args += ["--hot-tier-max-staleness", str(args.max_staleness)]
            tiered = ProxyProcess(upstream.url, ["--hot-tier", "cpu", *tier_args])
            plain = ProxyProcess(upstream.url, ["--hot-tier", "off"])
            floor = ProxyProcess(upstream.url, reference="bench.dictserver") if name == "hit" else None
            try:
                targets = {"direct": upstream.port, "tier": tiered.port, "notier": plain.port}
                if floor is not None:
                    targets["dict"] = floor.port
                rows += scenario(name, targets, args, {"tier": tiered})
            finally:
                tiered.close()
                plain.close()
                if floor is not None:
                    floor.close()
    head = (
        f"{'scenario':<8} {'-P':>3} {'direct rps':>11} {'tier rps':>10} {'ratio':>6} {'no-tier rps':>12} {'ratio':>6} "
        f"{'p50 d/tier/no ms':>20} {'tier hit ratio':>15}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['scenario']:<8} {r['pipeline']:>3} {r['direct_rps']:>11} {r['tier_rps']:>10} {r['tier_ratio']:>6.3f} "
            f"{r['notier_rps']:>12} {r['notier_ratio']:>6.3f} "
            f"{r['direct_p50_ms']:>6.3f}/{r['tier_p50_ms']:.3f}/{r['notier_p50_ms']:.3f} {r['tier_hit_ratio']:>15}"
        )
    for r in rows:
        if "dict_rps" in r:
            print(
                f"\nreference (bench/dictserver.py, a plain dict GET server) in the same run, {r['scenario']} -P {r['pipeline']}: "
                f"{r['dict_rps']} rps = {r['dict_ratio']:.3f}x direct, p50 {r['dict_p50_ms']:.3f} ms; "
                f"tier refreshes {r['tier_refreshes']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
