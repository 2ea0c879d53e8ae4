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


def train_main(argv: list[str]) -> int:
    p = OneLineParser(prog="predis train", description="Train the LSTM next-key model on an access log.")
    p.add_argument("log", help="an access log (Parquet or Predis CSV)")
    p.add_argument("-o", "--output", required=True, help="model directory (or registry, with --registry)")
    p.add_argument(
        "--registry",
        action="store_true",
        help="add a new numbered version to the registry at -o and make it current",
    )
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="autocast to bf16 (auto: on a GPU, and on a CPU with native bf16, where the model runs in it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64, help="windows of --length reads per step")
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW's learning rate")
    p.add_argument("--max-keys", type=int, default=8_192, help="key vocabulary size")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="time budget of the whole command: the loop stops (between steps) in time for what follows, "
        "and the replays after it shrink to what is left",
    )
    p.add_argument("--split", type=float, default=0.8, help="share of the log (by time) used for training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    from accesslog.log import read_log
    from common.errors import ConfigError
    from ml.training.train import TrainConfig, train

    if args.epochs < 1 or args.batch < 1 or args.length < 2 or not 0 < args.split < 1 or not args.lr > 0:
        raise ConfigError(
            "--epochs and --batch must be at least 1, --length at least 2, --split in (0, 1), --lr positive"
        )
    log = read_log(args.log)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch=args.batch,
        length=args.length,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        max_keys=args.max_keys,
        max_seconds=args.max_seconds,
        split=args.split,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    metrics = train(log, args.output, cfg, registry=args.registry)
    summary = {
        "model_dir": metrics["model_dir"],
        "train_seconds": metrics["train_seconds"],
        "model": metrics["model"],
        "heuristics": metrics["heuristics"],
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
