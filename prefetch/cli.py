"""`predis sim`: replay an access log through the cache with every prefetcher arm."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from common.cli import OneLineParser
from common.errors import ConfigError

DEFAULT_ARMS = "frequency,obl,delta,markov,pg,mithril,oracle"
PLOT_SIZES = ["1%", "2%", "5%", "10%", "20%"]


def _load(path: str, fmt: str | None) -> Any:
    if fmt is None:
        from accesslog.log import read_log

        return read_log(path)
    from accesslog.traces import read_trace

    return read_trace(path, fmt)


def sim_main(argv: list[str]) -> int:
    from prefetch.predictors import known

    p = OneLineParser(
        prog="predis sim",
        description="Replay an access log through the hot tier's eviction policy with prefetcher arms.",
    )
    p.add_argument("trace", help="an access log (Parquet or Predis CSV), or a raw trace with --format")
    p.add_argument(
        "--cache",
        required=True,
        help="entries, or a share of the unique keys (10%%); comma-separated for several",
    )
    p.add_argument(
        "--prefetch",
        default=DEFAULT_ARMS,
        help=f"comma-separated arms, each NAME or NAME:param=value:... ({', '.join(known())}); "
        f"'none' always runs as the baseline; default {DEFAULT_ARMS}",
    )
    p.add_argument("--policy", default="lru", help="eviction policy: lru, s3fifo, or both comma-separated")
    p.add_argument(
        "--budget", type=float, default=1.0, help="prefetches per request on average, at most (default 1)"
    )
    p.add_argument(
        "--warmup", type=float, default=0.0, help="share of the trace that warms up but is not scored"
    )
    p.add_argument("--no-belady", action="store_true", help="skip Belady's MIN (libCacheSim)")
    p.add_argument(
        "--writes",
        choices=["drop", "read"],
        default="drop",
        help="drop: a write removes its key and is not scored, as the proxy's tier does (default); "
        "read: every access is a read (libCacheSim's convention for block traces)",
    )
    p.add_argument(
        "--prefetch-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a prefetch reaches the cache this long (in the log's time) after the read it was "
        "predicted from, as live prediction and the upstream read take time (default 0: at once)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--plot", metavar="DIR", help="also write hit-ratio curves over cache sizes (PNG) into DIR"
    )
    p.add_argument("--format", help="import the trace first from this trace format (see predis trace import)")
    args = p.parse_args(argv)
    from prefetch.sim import format_table, simulate

    arms = [a for a in args.prefetch.split(",") if a.strip()]
    policies = [x.strip() for x in args.policy.split(",") if x.strip()]
    sizes = [s.strip() for s in args.cache.split(",") if s.strip()]
    if not arms or not policies or not sizes:
        raise ConfigError("--prefetch, --policy and --cache each need at least one value")
    log = _load(args.trace, args.format)
    if len(log) == 0:
        raise ConfigError(f"{args.trace}: the trace is empty")
    reports = []
    for size in sizes:
        report = simulate(
            log,
            size,
            arms,
            policies=policies,
            budget=args.budget,
            warmup=args.warmup,
            with_belady=not args.no_belady,
            writes=args.writes,
            delay=args.prefetch_delay,
        )
        reports.append(report)
        if not args.json:
            print(format_table(report))
            print()
    if args.json:
        print(json.dumps({"trace": log.source, "runs": [r.as_dict() for r in reports]}, sort_keys=True))
    if args.plot:
        path = plot_curves(log, arms, policies, args.budget, args.warmup, args.plot)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def plot_curves(
    log: Any, arms: list[str], policies: list[str], budget: float, warmup: float, out_dir: str
) -> str:
    from common.plots import axes, save
    from prefetch.sim import simulate

    os.makedirs(out_dir, exist_ok=True)  # (before the replays: an unusable directory fails at once)
    curves: dict[str, list[tuple[float, float]]] = {}
    unique = len(log.key_codes()[1])
    for size in PLOT_SIZES:
        if int(float(size[:-1]) / 100 * unique) < 1 or float(size[:-1]) / 100 * unique >= unique:
            continue
        report = simulate(log, size, arms, policies=policies, budget=budget, warmup=warmup)
        for arm in report.arms:
            curves.setdefault(arm.arm, []).append((float(size[:-1]), 100 * arm.hit_ratio))
    fig, ax = axes()
    for name, points in curves.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=name, linestyle="--" if name in ("oracle", "belady") else "-")
    ax.set(xscale="log", xlabel="cache size (% of unique keys)", ylabel="hit ratio (%)", title=log.source)
    return save(fig, ax, out_dir, f"{log.source or 'trace'}-hit-ratio.png")
