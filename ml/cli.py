"""`predis train`: train the next-key model on an access log."""

from __future__ import annotations

import json
import sys
from typing import Any

from common.cli import OneLineParser


def time_spent(metrics: dict[str, Any]) -> str:
    """One line on where the command's time went and what its budget cut."""
    budget, laps = metrics["time_budget"], metrics["seconds"]
    phases = ", ".join(f"{name} {laps[name]:g}" for name in laps if name != "total")
    cut = []
    if budget["stopped_mid_epoch"]:
        cut.append(
            f"the loop stopped in epoch {budget['epochs']} at step {budget['steps_in_last_epoch']}"
            f" of {budget['steps_per_epoch']}"
        )
    elif budget["stopped"]:
        cut.append(f"the loop stopped after epoch {budget['epochs']}")
    if budget["replays_after_loop"] != "all":
        cut.append(f"replays after it: {budget['replays_after_loop']}")
    return f"predis train: {budget['seconds']:g} s of a {budget['max_seconds']:g} s budget ({phases})" + (
        "; " + "; ".join(cut) if cut else ""
    )


def training_flags(p: Any) -> None:
    """The training flags predis train and predis retrain share (ml.training.train.TrainConfig's)."""
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=64, help="windows of --length reads per step")
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW's learning rate")
    p.add_argument(
        "--patience", type=int, default=2, help="epochs without a better validation loss before stopping"
    )
    p.add_argument("--max-keys", type=int, default=8_192, help="key vocabulary size")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="time budget of training: the loop stops (between steps) in time for what follows, "
        "and the replays after it shrink to what is left",
    )
    p.add_argument(
        "--ranker-replays",
        choices=["auto", "always", "never"],
        default="auto",
        help="replay the learned ranker as a fallback candidate: where the budget holds it (auto), "
        "whatever it costs, or not at all",
    )


def train_config(args: Any, **more: Any) -> Any:
    """ml.training.train.TrainConfig from the flags ``training_flags`` added, and ``more``."""
    from ml.training.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch=args.batch,
        length=args.length,
        lr=args.lr,
        patience=args.patience,
        max_keys=args.max_keys,
        max_seconds=args.max_seconds,
        ranker_replays=args.ranker_replays,
        **more,
    )


def train_main(argv: list[str]) -> int:
    p = OneLineParser(prog="predis train", description="Train the LSTM next-key model on an access log.")
    p.add_argument("log", help="an access log (Parquet or Predis CSV)")
    p.add_argument("-o", "--output", required=True, help="model directory (or registry, with --registry)")
    p.add_argument(
        "--registry",
        action="store_true",
        help="add a new numbered version to the registry at -o and make it current",
    )
    training_flags(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="autocast to bf16 (auto: on a GPU, and on a CPU with native bf16, where the model runs in it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", type=float, default=0.8, help="share of the log (by time) used for training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="training processes (DistributedDataParallel: gloo on CPUs, nccl on one GPU each)",
    )
    p.add_argument(
        "--init-from",
        default="",
        help="fine-tune this model (directory or registry) on the log instead of training from scratch",
    )
    args = p.parse_args(argv)
    from common.errors import ConfigError

    # (the flags are checked before the training code and torch are imported: a bad one answers at once)
    if args.epochs < 1 or args.batch < 1 or args.length < 2 or not 0 < args.split < 1 or not args.lr > 0:
        raise ConfigError(
            "--epochs and --batch must be at least 1, --length at least 2, --split in (0, 1), --lr positive"
        )
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    from ml.registry import ModelError, resolve

    if args.init_from:
        try:
            resolve(args.init_from)
        except ModelError as exc:
            raise ConfigError(f"--init-from: {exc}") from None
    from accesslog.log import read_log

    log = read_log(args.log)
    from ml.training.train import train

    cfg = train_config(
        args,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        split=args.split,
        progress=not args.quiet and sys.stderr.isatty(),
        init_from=args.init_from,
    )
    if args.nproc > 1:
        from ml.training.launch import train_processes

        metrics = train_processes(args.nproc, args.log, args.output, cfg, registry=args.registry)
    else:
        metrics = train(log, args.output, cfg, registry=args.registry)
    summary = {
        "model_dir": metrics["model_dir"],
        "train_seconds": metrics["train_seconds"],
        "model": metrics["model"],
        "heuristics": metrics["heuristics"],
        "warm_start": metrics["warm_start"],
        "fallback": metrics["fallback"],
        "policy": metrics["policy"],
        "fallback_hit_ratios": metrics["fallback_hit_ratios"],
        "fallback_hit_ratios_by_share": metrics["fallback_hit_ratios_by_share"],
        "gated_hit_ratios": metrics["gated_hit_ratios"],
        "seconds": metrics["seconds"],
        "time_budget": metrics["time_budget"],
    }
    print(json.dumps(summary, indent=1))
    print(time_spent(metrics), file=sys.stderr)
    return 0


def retrain_main(argv: list[str]) -> int:
    p = OneLineParser(
        prog="predis retrain",
        description="Retrain the model on reads a proxy recorded (--access-log-dir), promoting it only past the gate.",
    )
    p.add_argument("--logs", required=True, help="the recording directory (predis serve --access-log-dir)")
    p.add_argument("--registry", required=True, help="the model registry (numbered versions, 'current')")
    p.add_argument("--holdout", type=float, default=0.2, help="newest share of the reads the gate replays")
    p.add_argument(
        "--cache",
        default="5%",
        help="the gate replays at this cache size: give the live tier's, in entries (or a share of the keys)",
    )
    p.add_argument(
        "--margin", type=float, default=0.005, help="hit ratio the candidate must gain to be promoted"
    )
    p.add_argument("--min-reads", type=int, default=20_000, help="fewer recorded reads: no retraining")
    training_flags(p)
    p.add_argument(
        "--recent", type=int, default=0, help="use the newest this many recorded reads only (0: all)"
    )
    p.add_argument(
        "--fine-tune",
        action="store_true",
        help="start from the current model (its weights; its vocabulary grown by the new keys) instead of from scratch",
    )
    p.add_argument("--watch", action="store_true", help="keep going: retrain on new reads or an old model")
    p.add_argument(
        "--every-reads", type=int, default=200_000, help="with --watch: new reads that trigger a round"
    )
    p.add_argument(
        "--max-age", type=float, default=0.0, help="with --watch: seconds after which a model is retrained"
    )
    p.add_argument("--interval", type=float, default=30.0, help="with --watch: seconds between checks")
    p.add_argument(
        "--drift-from",
        help="with --watch: a proxy's metrics URL (http://HOST:PORT/metrics): its drift alert triggers a round",
    )
    p.add_argument(
        "--after-drift-reads",
        type=int,
        default=20_000,
        help="with --drift-from: recorded reads of the new traffic a drift-triggered round waits for",
    )
    args = p.parse_args(argv)
    from pathlib import Path

    from common.errors import ConfigError

    # (checked before the training code and torch are imported: a bad flag answers at once)
    if not 0 < args.holdout < 1 or args.min_reads < 2 or args.every_reads < 1 or args.interval <= 0:
        raise ConfigError(
            "--holdout must be in (0, 1), --min-reads at least 2, --every-reads and --interval positive"
        )
    if not Path(args.logs).is_dir():
        raise ConfigError(f"--logs {args.logs}: no such directory")
    from ml.training.retrain import RetrainConfig, drift_alerts, retrain_once, watch

    cfg = RetrainConfig(
        holdout=args.holdout,
        cache=args.cache,
        margin=args.margin,
        min_reads=args.min_reads,
        recent=args.recent,
        fine_tune=args.fine_tune,
        train=train_config(args, progress=False),
    )

    def say(decision: dict[str, Any]) -> None:
        print(json.dumps({k: v for k, v in decision.items() if k != "config"}, sort_keys=True), flush=True)

    if args.watch:
        drift = drift_alerts(args.drift_from) if args.drift_from else None
        watch(
            args.logs,
            args.registry,
            cfg,
            args.every_reads,
            args.max_age,
            args.interval,
            say=say,
            drift=drift,
            min_new_reads=args.after_drift_reads,
        )
        return 0
    say(retrain_once(args.logs, args.registry, cfg))
    return 0


def model_main(argv: list[str]) -> int:
    p = OneLineParser(prog="predis model", description="List a model registry's versions, or roll back.")
    p.add_argument("action", choices=["list", "rollback"])
    p.add_argument("--registry", required=True)
    p.add_argument("--to", help="rollback: this version (default: the one before the current)")
    args = p.parse_args(argv)
    from common.errors import ConfigError
    from ml.registry import ModelError, resolve, rollback, versions

    found = versions(args.registry)
    if not found:
        raise ConfigError(f"{args.registry}: no model versions")
    try:
        current = resolve(args.registry)
    except ModelError:
        current = None
    if args.action == "list":
        for version in found:
            doc = json.loads((version / "manifest.json").read_text())
            gate = doc.get("gate") or {}
            line = f"{'*' if current == version else ' '} {version.name}  created {doc.get('created', '?')}"
            if gate:
                line += (
                    f"  gate: candidate {gate.get('candidate_hit_ratio')} against current "
                    f"{gate.get('current_hit_ratio')} on {gate.get('held_out_reads')} held-out reads"
                )
            print(line)
        return 0
    try:
        was, now = rollback(args.registry, args.to)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    print(f"current: {now} (was {was or 'none'})")
    return 0
