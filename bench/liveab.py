"""A live A/B test of two prefetchers beside the simulator on the same log and cache size.

    python -m bench.liveab [--workload web] [--accesses 30000] [--seed 2] [--cache 5%]
        [--arms A=markov,B=none] [--rate 3000] [--repeats 3] [--proxy-args "--workers 2" ...]
        [--log ACCESS_LOG] [--replay-nice N] [--replay-client redis-py|hiredis]

Generates the workload (``--seed``), replays it in the simulator (each arm's spec alone, the whole
cache), then ``--repeats`` times starts Redis and a proxy whose tier holds ``--cache`` of the keys'
entries, split 50/50 between the arms, and drives the log through it with ``predis replay`` at
``--rate`` requests/s, one connection per client stream. Prints each live repeat's per-arm hit
ratio, the medians, and the simulator's figures for the same arms. ``bench.demo`` runs one repeat.
``--proxy-args`` more than once: each repeat runs the proxy once with each set of flags, in turn,
and the table has a row per set and arm (``--proxy-args ""`` is the proxy as it is). The table also gives each arm's prediction latency
(read received to prefetch sent), p50 and p99, medians over the repeats, and after it the engine's
part of it: from a batch's first read to the engine reading the batch, and to its answer written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from bench.loadtest import ProxyProcess
from proxy.embedded import EmbeddedRedis


def tier_bytes_for(log: Any, share: float) -> int:
    """Bytes for ``share`` of the log's keys' entries (key twice, value, the tier's overhead)."""
    import numpy as np

    sizes: dict[str, int] = dict(zip(log.keys(), log.column("size").tolist(), strict=True))
    entry = float(np.mean([2 * len(k) + v + 570 for k, v in sizes.items()]))
    return int(entry * len(sizes) * share)


def run_live(
    path: str,
    tier_bytes: int,
    arms: str,
    rate: float,
    quiet: bool = False,
    proxy_args: Sequence[str] = (),
    replay_nice: int = 0,
    replay_client: str = "redis-py",
) -> dict[str, Any]:
    """One live run: Redis, a proxy with ``--ab arms``, ``predis replay`` of ``path`` (at
    ``replay_nice``); its result."""
    with EmbeddedRedis() as upstream:
        proxy = ProxyProcess(upstream.url, ["--hot-tier-bytes", str(tier_bytes), "--ab", arms, *proxy_args])
        try:
            proxy.wait_for_engine()
            cmd = [sys.executable, "-m", "proxy.cli", "replay", path, "--port", str(proxy.port)]
            cmd += ["--rate", str(rate), "--load-values", "--connections", "2000", "--json"]
            cmd += ["--client", replay_client]
            if replay_nice:
                cmd = ["nice", "-n", str(replay_nice), *cmd]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
        finally:
            proxy.close()
    result: dict[str, Any] = json.loads(out.stdout)
    if not quiet:
        from proxy.replay import format_result

        print(format_result(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.liveab", description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="web")
    p.add_argument(
        "--log", help="an access log to replay instead of a generated workload (predis trace import)"
    )
    p.add_argument("--accesses", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--cache", default="5%")
    p.add_argument("--arms", default="MARKOV=markov,NONE=none")
    p.add_argument("--rate", type=float, default=3_000.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--proxy-args",
        action="append",
        help="more flags for predis serve, space-separated; again for another variant, run in turn",
    )
    p.add_argument(
        "--replay-nice",
        type=int,
        default=0,
        help="run the replay (the load) at this nice value, so it yields the cores as a client on "
        "another host would",
    )
    p.add_argument(
        "--replay-client",
        choices=["redis-py", "hiredis"],
        default="redis-py",
        help="predis replay's client: redis-py's asyncio client, or the lean one on hiredis",
    )
    args = p.parse_args(argv)
    from accesslog.generators import generate
    from accesslog.log import read_log, write_log
    from prefetch.engine import parse_arms
    from prefetch.sim import simulate

    arms = parse_arms(args.arms)
    if args.log:
        log = read_log(args.log)
        args.workload, args.seed, args.accesses = args.log.rsplit("/", 1)[-1], 0, len(log)
    else:
        log = generate(args.workload, args.accesses, seed=args.seed)
    report = simulate(log, args.cache, [spec for _, spec in arms], with_belady=False)
    # (an arm that chose its own eviction policy is named SPEC@POLICY by the simulator)
    offline = {_arm_key(a.arm): 100 * a.hit_ratio for a in report.arms}
    tier_bytes = tier_bytes_for(log, float(args.cache.rstrip("%")) / 100)
    variants = args.proxy_args or [""]
    rows = [(v, name) for v in variants for name, _ in arms]
    live: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    upstream: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    latency: dict[tuple[str, str], list[tuple[float, float]]] = {row: [] for row in rows}
    get_latency: dict[tuple[str, str], list[tuple[float, float]]] = {row: [] for row in rows}  # the replay's
    stages: dict[str, dict[str, list[float]]] = {v: {} for v in variants}  # the engine's, per variant
    span = float(log.timestamps()[-1] - log.timestamps()[0])
    delays: list[float] = []  # per repeat: a prefetch's delay after its read, in the log's time
    rules: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{args.workload}-seed{args.seed}.parquet"
        write_log(log, path)
        for repeat in range(args.repeats):
            for variant in variants:
                result = run_live(
                    path,
                    tier_bytes,
                    args.arms,
                    args.rate,
                    quiet=True,
                    proxy_args=variant.split(),
                    replay_nice=args.replay_nice,
                    replay_client=args.replay_client,
                )
                for arm in result["ab"]["arms"]:
                    live[variant, arm["name"]].append(100 * arm["hit_ratio"])
                    upstream[variant, arm["name"]].append(arm.get("upstream_per_get") or 0.0)
                    latency[variant, arm["name"]].append(
                        (arm.get("prediction_p50_us") or 0.0, arm.get("prediction_p99_us") or 0.0)
                    )
                    get_latency[variant, arm["name"]].append(
                        (arm.get("get_p50_us") or 0.0, arm.get("get_p99_us") or 0.0)
                    )
                for key, value in result["prefetch"].items():
                    if key.startswith("engine_") and key.endswith("_us"):
                        stages[variant].setdefault(key[7:-3], []).append(value)
                for key, value in result.get("loop", {}).items():
                    if key.endswith("_us"):
                        stages[variant].setdefault(f"proxy {key[:-3]}", []).append(value)
                if variant == variants[0]:
                    delays.append(live_delay(result, span))
                rules = result["ab"].get("rules", [])
                figures = ", ".join(f"{n} {live[variant, n][-1]:.2f}" for n, _ in arms)
                shed = result["prefetch"]["predict_shed"]
                print(f"repeat {repeat + 1} [{variant}]: live hit % {figures}; shed {shed}")
    print(
        f"\n{args.workload} seed {args.seed}, {args.accesses:,} accesses ({report.requests - report.writes:,} "
        f"reads), cache {args.cache} ({tier_bytes:,} bytes live, {report.capacity:,} entries simulated), "
        f"{args.rate:,.0f} requests/s, {args.repeats} live repeats\n"
    )
    # The simulator again with prefetches that take as long as the live ones did (in the log's
    # time): how much of the gap is timing.
    delay = statistics.median(delays)
    if rules:  # (the last repeat's)
        taught = "; ".join(f"{r['arm']}: {r['from']} -> {r['to']}" for r in rules)
        print(f"template rules the models taught (last repeat): {taught}")
    late_report = simulate(log, args.cache, [spec for _, spec in arms], with_belady=False, delay=delay)
    delayed = {_arm_key(a.arm): 100 * a.hit_ratio for a in late_report.arms}
    print(
        f"simulator with delay: each prefetch lands {delay * 1e3:.2f} ms of the log's time after its read "
        "(the live runs' median prediction latency plus a GET's, scaled by the replay's speed-up)\n"
    )
    print(
        "| proxy flags | arm | spec | live hit %, median (range) | simulator hit % | live - simulator "
        "| simulator with delay | live - delayed | live upstream reads per GET | prediction latency p50 / p99, ms "
        "| the replay's GET p50 / p99, ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    specs = dict(arms)
    for variant, name in rows:
        spec, got = specs[name], live[variant, name]
        median = statistics.median(got)
        p50 = statistics.median(p for p, _ in latency[variant, name])  # (medians over the repeats)
        p99 = statistics.median(p for _, p in latency[variant, name])
        get50 = statistics.median(p for p, _ in get_latency[variant, name])
        get99 = statistics.median(p for _, p in get_latency[variant, name])
        print(
            f"| {variant or '(none)'} | {name} | {spec} | {median:.2f} ({min(got):.2f}-{max(got):.2f}) | "
            f"{offline[spec]:.2f} | {median - offline[spec]:+.2f} | {delayed[spec]:.2f} | "
            f"{median - delayed[spec]:+.2f} | {statistics.median(upstream[variant, name]):.3f} | "
            f"{p50 / 1e3:.2f} / {p99 / 1e3:.2f} | {get50 / 1e3:.2f} / {get99 / 1e3:.2f} |"
        )
    # Where the latency goes: a batch's first read to the engine reading the batch, and to the
    # engine's answer written; then the proxy reading the answer ("answer_read", after whatever its
    # event loop was doing: its lag).
    print(
        "\nthe engine's stages, from a batch's first read at the proxy, and the proxy's event loop lag "
        "and GC pauses, ms (medians over the repeats):"
    )
    for variant in variants:
        figures = stages[variant]
        if figures:
            shown = ", ".join(
                f"{name} {statistics.median(v) / 1e3:.2f}" for name, v in sorted(figures.items())
            )
            print(f"  {variant or '(none)'}: {shown}")
    return 0


def _arm_key(arm: str) -> str:
    """The spec of a simulator arm's name (an arm that chose its own policy is SPEC@POLICY)."""
    return arm if "::" in arm else arm.partition("@")[0]


def live_delay(result: dict[str, Any], span: float) -> float:
    """A live run's typical delay between a read and its prefetch landing in the tier, in the log's
    time: the arms' median prediction latency (read received to prefetch sent) plus the replay's
    median GET latency (the prefetch's own upstream read), times the replay's speed-up over the log."""
    arms = [a for a in result["ab"]["arms"] if a.get("prediction_p50_us")]
    if not arms or not result.get("seconds"):
        return 0.0
    predict = statistics.median(a["prediction_p50_us"] for a in arms)
    speedup = span / float(result["seconds"])
    return (predict + float(result["latency_p50_us"])) / 1e6 * speedup


if __name__ == "__main__":
    sys.exit(main())
