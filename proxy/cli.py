"""The `predis` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from typing import Any

import structlog

from common.cli import OneLineParser
from common.errors import PredisError
from proxy.config import load_settings

log = structlog.get_logger("predis.cli")

# Every subcommand: name -> ("module:function", help). The function takes the arguments after the
# name and returns the exit status; its module is imported only when it runs, so that `predis serve`
# never pays for pyarrow or torch. Each parses its own flags with common.cli.OneLineParser.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("proxy.cli:serve_main", "run the proxy"),
    "stats": ("proxy.cli:stats_main", "print a running proxy's figures (PREDIS STATS)"),
    "ab": ("proxy.cli:ab_main", "print a running proxy's A/B test: its arms and tests (PREDIS AB)"),
    "gen": (
        "accesslog.cli:gen_main",
        "generate a synthetic workload, list workloads, validate an access log",
    ),
    "trace": ("accesslog.cli:trace_main", "import a real cache trace into an access log, or export one"),
    "sim": ("prefetch.cli:sim_main", "replay an access log through the cache with prefetcher arms"),
    "train": ("ml.cli:train_main", "train the LSTM next-key model on an access log"),
    "retrain": (
        "ml.cli:retrain_main",
        "retrain the model on recorded reads; promote it only if it beats the current one",
    ),
    "model": ("ml.cli:model_main", "list a model registry's versions, or roll back to an earlier one"),
    "replay": ("proxy.replay:replay_main", "replay an access log through a running proxy; A/B report"),
    "report": ("proxy.report:report_main", "one self-contained HTML page of a run's figures (--run-dir)"),
}


def serve_main(argv: list[str]) -> int:
    p = OneLineParser(prog="predis serve", description="Run the proxy.")
    p.add_argument("--config", help="TOML settings file ([predis] table)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 6380; 0 picks a free one)")
    p.add_argument("--upstream", help="redis://[user:pass@]HOST:PORT[/db]; default: embedded redis-server")
    p.add_argument(
        "--redis-server", dest="redis_server", help="redis-server binary for the embedded upstream"
    )
    p.add_argument("--connect-timeout", dest="connect_timeout", type=float)
    p.add_argument("--command-timeout", dest="command_timeout", type=float)
    p.add_argument("--max-clients", dest="max_clients", type=int)
    p.add_argument(
        "--workers",
        help="proxy processes sharing the port under a supervisor: a number, or auto (the CPUs)",
    )
    p.add_argument(
        "--prediction-engines",
        dest="prediction_engines",
        type=int,
        help="with --workers and live prefetching: engines the workers share (default 1)",
    )
    p.add_argument("--worker-index", dest="worker_index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-engine", dest="worker_engine", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-dir", dest="worker_dir", help=argparse.SUPPRESS)
    p.add_argument(
        "--upstream-pool",
        dest="upstream_pool",
        type=int,
        help="N shared upstream connections for clients in the default state (0: one per client)",
    )
    p.add_argument(
        "--cluster-replica-reads",
        dest="cluster_replica_reads",
        action="store_true",
        default=None,
        help="with a redis-cluster:// upstream: clients' read-only commands go to replicas",
    )
    p.add_argument("--output-buffer-limit", dest="output_buffer_limit", type=int)
    p.add_argument(
        "--hot-tier",
        dest="hot_tier",
        choices=["off", "cpu", "gpu"],
        help="where cached values live (default cpu)",
    )
    p.add_argument("--hot-tier-bytes", dest="hot_tier_bytes", type=int, help="hot tier size in bytes")
    p.add_argument("--hot-tier-policy", dest="hot_tier_policy", choices=["lru", "s3fifo"])
    p.add_argument("--hot-tier-max-entry", dest="hot_tier_max_entry", type=int)
    p.add_argument("--hot-tier-max-staleness", dest="hot_tier_max_staleness", type=float)
    p.add_argument("--hot-tier-max-batch", dest="hot_tier_max_batch", type=int)
    p.add_argument("--prefetch", help="live prefetcher: none, a heuristic (markov, pg:lookahead=10...)")
    p.add_argument("--ab", help="A/B experiment of prefetchers: A=SPEC,B=SPEC[,C=SPEC]")
    p.add_argument("--ab-shares", dest="ab_shares", help="the arms' shares of the keys, e.g. 50,50")
    p.add_argument("--ab-seed", dest="ab_seed", type=int, help="seed of the key hash that splits the arms")
    p.add_argument("--prefetch-budget", dest="prefetch_budget", type=float, help="prefetches per GET")
    p.add_argument(
        "--prefetch-engine-priority",
        dest="prefetch_engine_priority",
        choices=["idle", "low", "normal", "realtime"],
        help="the prediction engine's CPU priority (default low)",
    )
    p.add_argument(
        "--prefetch-engine-cpu",
        dest="prefetch_engine_cpu",
        type=float,
        help="the share of one core the prediction engine may use, in (0, 1] (default 1: no bound)",
    )
    p.add_argument(
        "--no-prefetch-hints",
        dest="prefetch_hints",
        action="store_const",
        const=False,
        help="a miss does not read the keys the engine named after it before (default: it does)",
    )
    p.add_argument(
        "--no-prefetch-rules",
        dest="prefetch_rules",
        action="store_const",
        const=False,
        help="a miss does not read the keys a model's template rules name (default: it does)",
    )
    p.add_argument(
        "--device",
        dest="prefetch_device",
        choices=["auto", "cpu", "cuda"],
        help="where a model arm (ml:MODEL_DIR) runs (default auto: a GPU where torch sees one)",
    )
    p.add_argument(
        "--access-log-dir",
        dest="access_log_dir",
        help="record reads for retraining: rotating access-log Parquet files in this directory",
    )
    p.add_argument(
        "--access-log-sample", dest="access_log_sample", type=float, help="share of client streams recorded"
    )
    p.add_argument("--access-log-max-bytes", dest="access_log_max_bytes", type=int)
    p.add_argument(
        "--access-log-salt",
        dest="access_log_salt",
        help="secret: record keys as keyed pseudonyms of the same shape (better in PREDIS_ACCESS_LOG_SALT)",
    )
    p.add_argument(
        "--admin",
        help="[HOST:]PORT of the admin HTTP listener (/metrics for Prometheus, /healthz); default none",
    )
    p.add_argument(
        "--admin-users",
        dest="admin_users",
        help="ACL users allowed PREDIS AB RESET and PREDIS MODEL ROLLBACK, comma-separated (default: default)",
    )
    p.add_argument(
        "--admin-token",
        dest="admin_token",
        help="bearer token the admin listener's pages ask for (better in PREDIS_ADMIN_TOKEN); /healthz stays open",
    )
    p.add_argument("--tls-port", dest="tls_port", type=int, help="port of the TLS listener (default 0: none)")
    p.add_argument("--tls-cert-file", dest="tls_cert_file", help="the TLS listener's certificate (PEM)")
    p.add_argument("--tls-key-file", dest="tls_key_file", help="its private key (PEM)")
    p.add_argument(
        "--tls-ca-cert-file",
        dest="tls_ca_cert_file",
        help="CA that clients' certificates and a rediss:// upstream's are checked against",
    )
    p.add_argument(
        "--tls-auth-clients",
        dest="tls_auth_clients",
        choices=["yes", "optional", "no"],
        help="whether TLS clients must present a certificate (default yes)",
    )
    p.add_argument(
        "--tls-client-cert-file",
        dest="tls_client_cert_file",
        help="certificate presented to a rediss:// upstream (default: --tls-cert-file)",
    )
    p.add_argument("--tls-client-key-file", dest="tls_client_key_file", help="its private key")
    p.add_argument(
        "--run-dir",
        dest="run_dir",
        help="directory where the proxy leaves its figures over time (history.jsonl, latency.json) for predis report",
    )
    p.add_argument("--log-level", dest="log_level")
    p.add_argument("--log-format", dest="log_format", choices=["console", "json"])
    args = p.parse_args(argv)
    args.argv = argv
    return serve(args)


def stats_main(argv: list[str]) -> int:
    p = OneLineParser(prog="predis stats", description="Print a running proxy's figures (PREDIS STATS).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6380)
    p.add_argument("--json", action="store_true", help="one JSON object")
    return stats(p.parse_args(argv))


def ab_main(argv: list[str]) -> int:
    p = OneLineParser(
        prog="predis ab", description="Print a running proxy's A/B test: its arms and tests (PREDIS AB)."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6380)
    p.add_argument("--json", action="store_true", help="one JSON object (null when no experiment runs)")
    return stats(p.parse_args(argv), section="AB")


def serve(args: argparse.Namespace) -> int:
    from proxy.log import configure_logging

    overrides = {
        k: getattr(args, k)
        for k in (
            "host",
            "port",
            "upstream",
            "redis_server",
            "connect_timeout",
            "command_timeout",
            "max_clients",
            "upstream_pool",
            "cluster_replica_reads",
            "output_buffer_limit",
            "log_level",
            "log_format",
            "hot_tier",
            "hot_tier_bytes",
            "hot_tier_policy",
            "hot_tier_max_entry",
            "hot_tier_max_staleness",
            "hot_tier_max_batch",
            "prefetch",
            "ab",
            "ab_shares",
            "ab_seed",
            "prefetch_budget",
            "prefetch_engine_priority",
            "prefetch_engine_cpu",
            "prefetch_hints",
            "prefetch_rules",
            "prefetch_device",
            "admin",
            "admin_users",
            "admin_token",
            "tls_port",
            "tls_cert_file",
            "tls_key_file",
            "tls_ca_cert_file",
            "tls_auth_clients",
            "tls_client_cert_file",
            "tls_client_key_file",
            "run_dir",
            "access_log_dir",
            "access_log_sample",
            "access_log_max_bytes",
            "access_log_salt",
            "prediction_engines",
        )
    }
    if args.workers is not None:
        from proxy.workers import resolve_workers

        try:
            overrides["workers"] = resolve_workers(args.workers)
        except ValueError as exc:
            raise PredisError(str(exc)) from None
    settings = load_settings(args.config, overrides=overrides)
    configure_logging(settings.log_level, settings.log_format)
    # (imported once the settings are known good: a bad flag or file answers without the wait)
    from proxy.embedded import EmbeddedRedis
    from proxy.server import ProxyServer, new_event_loop

    if settings.workers > 1 and args.worker_index is None:
        from proxy.workers import supervise

        return supervise(settings, getattr(args, "argv", []))
    if settings.hot_tier == "gpu":
        from prefetch.store import load_cupy

        load_cupy()  # refuse before anything is started
    embedded = None
    if not settings.upstream:
        embedded = EmbeddedRedis(settings.redis_server).start()
        settings.upstream = embedded.url
        log.info("started embedded redis-server", port=embedded.port, pid=embedded.process.pid)  # type: ignore[union-attr]
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        if args.worker_index:  # (with workers, worker 0 writes the run directory, for the whole proxy)
            settings.run_dir = ""
        server = ProxyServer(settings)
        if args.worker_index is not None:
            from proxy.workers import WorkerFigures

            server.stats.peers = WorkerFigures(args.worker_dir, args.worker_index)
            if server.admin is not None:
                server.admin.reuse_port = True
            if server.prediction is not None:
                from proxy.workers import engine_address

                server.prediction.engine_address = engine_address(args.worker_dir, args.worker_engine)
            if server.tier is not None:
                from proxy.workers import shared_epochs

                server.tier.share_epochs(shared_epochs(args.worker_dir))
    except BaseException:
        loop.close()
        if embedded is not None:
            embedded.close()
        raise
    stop = asyncio.Event()

    async def main() -> None:
        await server.start()
        # What start-up made (modules, tables, settings) lives as long as the process: the garbage
        # collector need never look at it again, which shortens every later full collection
        # (each one stops the event loop) by what it would have scanned.
        gc.freeze()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await server.close()

    try:
        loop.run_until_complete(main())
    except OSError as exc:
        raise PredisError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    finally:
        loop.close()
        if embedded is not None:
            embedded.close()
    return 0


def stats(args: argparse.Namespace, section: str = "STATS") -> int:
    """``PREDIS STATS`` (or ``PREDIS AB``) of the proxy at --host/--port, as text or JSON."""
    import redis

    client = redis.Redis(host=args.host, port=args.port, socket_timeout=5)
    try:
        if args.json:
            raw = client.execute_command("PREDIS", section, "JSON")  # type: ignore[no-untyped-call]
            print(json.dumps(json.loads(raw), indent=2, sort_keys=True))
        else:
            text = client.execute_command("PREDIS", section)  # type: ignore[no-untyped-call]
            print(text.decode().replace("\r\n", "\n"), end="")
    except redis.ConnectionError as exc:
        raise PredisError(f"cannot reach a proxy at {args.host}:{args.port}: {exc}") from None
    except redis.ResponseError as exc:
        raise PredisError(
            f"{args.host}:{args.port} did not answer PREDIS {section} ({exc}): is it a Predis proxy?"
        ) from None
    return 0


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return (
        "usage: predis COMMAND [ARGS...]   (predis COMMAND --help for its flags)\n\n"
        "Redis-compatible cache proxy with an ML prefetcher.\n\ncommands:\n" + "\n".join(lines) + "\n"
    )


def run_command(name: str, argv: list[str]) -> int:
    import importlib

    module, _, function = COMMANDS[name][0].partition(":")
    entry: Any = getattr(importlib.import_module(module), function)
    return int(entry(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"predis: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return run_command(argv[0], argv[1:])
    except PredisError as exc:
        print(f"predis: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `predis gen --list | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
