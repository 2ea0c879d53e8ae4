"""``predis replay LOG --port P``: replay an access log through a running proxy (or plain Redis).

Each ``client`` stream of the log gets its own connection (redis-py's asyncio client, or with
``--client hiredis`` proxy.replayclient's; more streams than ``--connections`` share them
round-robin), and its requests go in time order at the log's pace, scaled to ``--rate``
requests/s or as fast as they go (``--max``). GETs are GETs; writes (SET, and any other op but
DEL) are SETs of a value of the logged size; DELs are DELs.
``--load-values`` first writes every key the log reads, so that GETs find values. At the end it
prints its own latency, the proxy's tier figures and, when the proxy runs an A/B test, the test's
report (reset at the start unless ``--no-reset``, so that it covers this replay only).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from common.cli import OneLineParser
from common.errors import ConfigError, PredisError
from common.histogram import LatencyHistogram


def replay_main(argv: list[str]) -> int:
    p = OneLineParser(prog="predis replay", description="Replay an access log through a running proxy.")
    p.add_argument("log", help="access log (Parquet or CSV, as predis gen writes)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6380)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="requests per second (default: the log's own pace)")
    pace.add_argument("--max", action="store_true", help="as fast as the connections go")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--limit", type=int, help="replay only the first N accesses")
    p.add_argument("--connections", type=int, default=64, help="most connections (default 64)")
    p.add_argument(
        "--client",
        choices=["redis-py", "hiredis"],
        default="redis-py",
        help="redis-py's asyncio client (the default), or a lean one on hiredis (proxy.replayclient), "
        "for rates where redis-py would load the machine more than the proxy under test",
    )
    p.add_argument("--load-values", action="store_true", help="SET every key first")
    p.add_argument("--no-reset", action="store_true", help="keep the A/B figures from before")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument(
        "--plot", metavar="DIR", help="also write each A/B arm's hit ratio over the replay (PNG) into DIR"
    )
    args = p.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        raise ConfigError(f"--rate must be positive, got {args.rate}")
    if args.connections < 1:
        raise ConfigError(f"--connections must be at least 1, got {args.connections}")
    from accesslog.log import read_log

    log = read_log(args.log)
    n = len(log) if args.limit is None else min(len(log), args.limit)
    if n == 0:
        raise ConfigError(f"{args.log}: no accesses to replay")
    result = asyncio.run(_replay(log, n, args))
    if args.plot:
        result["plot"] = plot_arms(result.get("samples", []), args.plot, Path(args.log).stem)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(format_result(result))
        if args.plot:
            print(f"wrote {result['plot']}" if result["plot"] else "no A/B test ran: nothing to plot")
    return 0


def plot_arms(samples: list[dict[str, Any]], out_dir: str, name: str) -> str | None:
    """Each arm's hit ratio over the replay from the sampled A/B figures: per interval (the GETs
    between two samples) and cumulative. The PNG's path, or None without an A/B test."""
    series: dict[str, list[tuple[float, int, int]]] = {}
    for sample in samples:
        for arm in sample["arms"]:
            series.setdefault(arm["name"], []).append((sample["t"], int(arm["gets"]), int(arm["hits"])))
    if not series:
        return None
    from common.plots import axes, save

    fig, ax = axes()
    for arm, points in series.items():
        xs, window, total = [], [], []
        for (_, g0, h0), (t, g1, h1) in zip(points, points[1:], strict=False):
            if g1 > g0:
                xs.append(t)
                window.append(100 * (h1 - h0) / (g1 - g0))
                total.append(100 * h1 / g1)
        (line,) = ax.plot(xs, window, alpha=0.4, label=f"{arm}, per interval")
        ax.plot(xs, total, color=line.get_color(), label=f"{arm}, cumulative")
    ax.set(xlabel="seconds into the replay", ylabel="hit ratio (%)", title=f"A/B arms: {name}")
    return save(fig, ax, out_dir, f"{name}-ab-hit-ratio.png")


async def _replay(log: Any, n: int, args: Any) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    keys = log.keys()[:n]
    ops = [str(op) for op in log.column("op")[:n]]
    sizes = log.column("size")[:n]
    ts = log.timestamps()[:n].astype(float)
    clients = log.clients()[:n]
    admin = aioredis.Redis(host=args.host, port=args.port, socket_timeout=30)
    try:
        await admin.ping()
    except (RedisConnectionError, OSError) as exc:
        raise PredisError(f"cannot reach {args.host}:{args.port}: {exc}") from None
    if args.load_values:
        await _load(admin, keys, sizes)
    has_ab = True
    if not args.no_reset:
        try:
            await admin.execute_command("PREDIS", "AB", "RESET")  # type: ignore[no-untyped-call]
        except ResponseError:
            has_ab = False  # plain Redis, or a proxy without an A/B test
    # Pace: wall seconds after the start at which access i is sent.
    span = float(ts[-1] - ts[0]) if n > 1 else 0.0
    if args.max or span <= 0:
        scale = 0.0
    elif args.rate:
        scale = (n / span) / args.rate  # the log's rate over the target's
    else:
        scale = 1.0
    streams: dict[int, list[int]] = {}
    for i, client in enumerate(clients.tolist()):
        streams.setdefault(int(client), []).append(i)
    count = min(args.connections, len(streams))
    conns: list[Any]
    if args.client == "hiredis":
        from proxy.replayclient import HiredisConnection

        conns = [HiredisConnection(args.host, args.port) for _ in range(count)]
    else:
        conns = [aioredis.Redis(host=args.host, port=args.port, socket_timeout=30) for _ in range(count)]
    latency = LatencyHistogram()
    # Each arm's GET latency as this client sees it (the split from the proxy's report).
    arm_of, by_arm = None, []
    if has_ab:
        try:
            report = json.loads(await admin.execute_command("PREDIS", "AB", "JSON"))  # type: ignore[no-untyped-call]
        except ResponseError:
            report = None
        if report and report.get("split"):
            from prefetch.engine import ArmSplit

            split = report["split"]
            arm_of = ArmSplit(split["shares"], int(split["seed"])).arm_of
            by_arm = [LatencyHistogram() for _ in split["shares"]]  # (the arms' figures may not be in yet)
    done = [0, 0]  # requests, errors
    start = time.monotonic()
    deadline = start + args.duration if args.duration else float("inf")
    t0 = float(ts[0])
    progress = _progress(n)

    async def run(rows: list[int], conn: Any) -> None:
        for i in rows:
            due = start + (float(ts[i]) - t0) * scale
            now = time.monotonic()
            if now >= deadline:
                return
            if due > now:
                await asyncio.sleep(due - now)
            key, op = keys[i], ops[i]
            sent = time.monotonic()
            try:
                if op in ("GET", "MGET"):
                    await conn.get(key)
                elif op == "DEL":
                    await conn.delete(key)
                else:
                    await conn.set(key, _value(key, int(sizes[i])))
            except (ResponseError, RedisConnectionError, OSError):
                done[1] += 1
            took = time.monotonic() - sent
            latency.record(took)
            if arm_of is not None and op in ("GET", "MGET"):
                by_arm[arm_of(key.encode())].record(took)
            done[0] += 1
            if progress is not None:
                progress.update(1)

    groups: list[list[list[int]]] = [[] for _ in conns]
    for j, rows in enumerate(streams.values()):
        groups[j % len(conns)].append(rows)
    # A connection carrying several streams interleaves them in time order.
    merged = [sorted(i for rows in group for i in rows) for group in groups]
    samples: list[dict[str, Any]] = []
    sampler = asyncio.create_task(_sample(admin, start, samples)) if has_ab and args.plot else None
    try:
        await asyncio.gather(*(run(rows, conn) for rows, conn in zip(merged, conns, strict=True)))
    finally:
        if sampler is not None:
            sampler.cancel()
        if progress is not None:
            progress.close()
        for conn in conns:
            await conn.aclose()
    seconds = time.monotonic() - start
    result: dict[str, Any] = {
        "log": str(args.log),
        "requests": done[0],
        "errors": done[1],
        "seconds": round(seconds, 3),
        "rate": round(done[0] / seconds, 1) if seconds else 0.0,
        "latency_p50_us": latency.percentile(50),
        "latency_p99_us": latency.percentile(99),
    }
    try:
        stats = json.loads(await admin.execute_command("PREDIS", "STATS", "JSON"))  # type: ignore[no-untyped-call]
        result["hot_tier"] = {k[9:]: v for k, v in stats.items() if k.startswith("hot_tier_")}
        result["prefetch"] = {k[9:]: v for k, v in stats.items() if k.startswith("prefetch_")}
        result["loop"] = {k: v for k, v in stats.items() if k.startswith(("event_loop_", "gc_"))}
    except ResponseError:
        pass  # plain Redis
    if has_ab:
        await asyncio.sleep(0.5)  # (the engine reports its figures every 0.2 s)
        try:
            result["ab"] = json.loads(await admin.execute_command("PREDIS", "AB", "JSON"))  # type: ignore[no-untyped-call]
        except ResponseError:
            pass
        for arm, histogram in zip(result.get("ab", {}).get("arms", []), by_arm, strict=False):
            arm["get_p50_us"] = histogram.percentile(50)
            arm["get_p99_us"] = histogram.percentile(99)
        if args.plot and result.get("ab"):
            samples.append({"t": round(time.monotonic() - start, 3), "arms": result["ab"]["arms"]})
            result["samples"] = samples
    await admin.aclose()
    return result


async def _sample(admin: Any, start: float, samples: list[dict[str, Any]], every: float = 0.5) -> None:
    """The A/B figures every ``every`` seconds, for --plot."""
    from redis.exceptions import ResponseError

    while True:
        try:
            report = json.loads(await admin.execute_command("PREDIS", "AB", "JSON"))
        except (ResponseError, OSError):
            return
        if report:
            samples.append({"t": round(time.monotonic() - start, 3), "arms": report["arms"]})
        await asyncio.sleep(every)


def _pair(p50: float | None, p99: float | None) -> str:
    return "-" if p50 is None or p99 is None else f"{p50:.0f}/{p99:.0f}"


def _value(key: str, size: int) -> bytes:
    """A value of ``size`` bytes that names its key (so a wrong one is recognisable)."""
    head = key.encode() + b"="
    size = max(size, 1)
    return (head * (size // len(head) + 1))[:size]


async def _load(conn: Any, keys: list[str], sizes: Any) -> None:
    size_of: dict[str, int] = {}
    for key, size in zip(keys, sizes.tolist(), strict=True):
        size_of[key] = int(size)
    items = list(size_of.items())
    for i in range(0, len(items), 1000):
        async with conn.pipeline(transaction=False) as pipe:
            for key, size in items[i : i + 1000]:
                pipe.set(key, _value(key, size))
            await pipe.execute()


def _progress(total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="req", file=sys.stderr)


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"{result['log']}: {result['requests']:,} requests in {result['seconds']} s "
        f"({result['rate']:,.0f}/s), {result['errors']} errors; latency p50 "
        f"{result['latency_p50_us']:.0f} us, p99 {result['latency_p99_us']:.0f} us",
    ]
    tier = result.get("hot_tier")
    if tier:
        lines.append(
            f"hot tier: hit ratio {tier.get('hit_ratio', 0):.4f} ({tier.get('hits', 0):,} hits, "
            f"{tier.get('misses', 0):,} misses), {tier.get('prefetch_fills', 0):,} prefetch fills, "
            f"{tier.get('prefetched_hits', 0):,} prefetched hits"
        )
    prefetch = result.get("prefetch")
    if prefetch:
        lines.append(
            f"prediction: {prefetch.get('records', 0):,} records, {prefetch.get('predict_shed', 0):,} shed, "
            f"{prefetch.get('prefetch_late', 0):,} late, engine starts {prefetch.get('engine_starts', 0)}"
        )
    ab = result.get("ab")
    if ab:
        lines.append("A/B test:")
        lines.append(
            f"  {'arm':<10} {'spec':<24} {'GETs':>9} {'hit ratio':>9} {'prefetch':>9} {'precision':>9} "
            f"{'late':>6} {'predict p99 us':>14} {'GET p50/p99 us':>15}"
        )
        for arm in ab["arms"]:
            precision = arm.get("precision")
            lines.append(
                f"  {arm['name']:<10} {arm['spec'][:24]:<24} {arm['gets']:>9,} {arm['hit_ratio']:>9.4f} "
                f"{arm.get('prefetch_fills') or 0:>9,} "
                f"{(f'{precision:.3f}' if precision is not None else '-'):>9} {arm.get('late', 0):>6,} "
                f"{arm.get('prediction_p99_us') or 0:>14.0f} "
                f"{_pair(arm.get('get_p50_us'), arm.get('get_p99_us')):>15}"
            )
        p = ab.get("chi2_p")
        lines.append(f"  chi-square p = {p:.3g}" if p is not None else "  chi-square p: not yet defined")
        for c in ab["comparisons"]:
            if c["difference"] is not None:
                lo, hi = c["ci95"]
                lines.append(
                    f"  {c['arms']}: hit ratio difference {c['difference']:+.4f} (95% CI {lo:+.4f} to "
                    f"{hi:+.4f}), sequential p = {c['sequential_p']:.3g}"
                )
        winner = ab.get("winner")
        lines.append(
            f"  winner: {winner}"
            if winner
            else f"  no winner named (needs {ab['min_gets']:,} GETs an arm and chi-square p < {ab['alpha']})"
        )
    return "\n".join(lines)
