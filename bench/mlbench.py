"""ML costs on this machine: incremental inference (one step + top-k) per read at a batch of
clients, and training throughput (sequences/s), for the reference model shape.

    python -m bench.mlbench [--batch 64] [--vocab 10000] [--device cpu]

Inference includes the successor candidates (the bounded table's update and lookup per read) and
training every head (key, template, copy, successor, confidence), as ``predis train`` runs them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from ml.inference.stepper import OnlineStepper, keep_freed_memory
from ml.models.lstm.model import LSTMConfig, NextKeyLSTM
from ml.training.data import SUCC_FEATURES
from ml.vocab import Vocabulary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=10_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--train-steps", type=int, default=20, help="0: inference only")
    ap.add_argument(
        "--successors", type=int, default=8, help="successor candidates per read (0: no successor head)"
    )
    ap.add_argument("--model", help="a trained model (directory or registry): step --log's reads through it")
    ap.add_argument(
        "--log", help="with --model: the access log whose reads are stepped, in batches of --batch"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="with --model: passes over the log, each timed")
    ap.add_argument(
        "--parts",
        action="store_true",
        help="with --model: one more batched pass, timing each part of the step",
    )
    ap.add_argument(
        "--batched-only", action="store_true", help="with --model: skip the one-step-per-read passes"
    )
    args = ap.parse_args()
    keep_freed_memory()  # (this process runs the stepper: set at its start, as the engine's will)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        on_log(args)
        return
    vocab = Vocabulary([f"item:{i}" for i in range(args.vocab - 2)], [f"t{i}:#" for i in range(100)])
    cfg = LSTMConfig(key_vocab=vocab.key_size, template_vocab=vocab.template_size, successors=args.successors)
    model = NextKeyLSTM(cfg).to(args.device).eval()
    stepper = OnlineStepper(model, vocab, args.device)
    rng = np.random.default_rng(0)
    times = []
    t = 0.0
    for step in range(args.steps):
        reads = [(c, f"item:{int(rng.integers(args.vocab - 2))}", t + c * 1e-4) for c in range(args.batch)]
        t += 0.01
        start = time.perf_counter()
        stepper.run(reads)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if step >= 10:
            times.append(time.perf_counter() - start)
    per_batch = statistics.median(times)
    print(
        f"incremental step + top-10 at batch {args.batch}, {args.vocab:,}-key softmax, {args.device}: "
        f"{per_batch * 1e3:.2f} ms per batch, {per_batch / args.batch * 1e6:.0f} us per read (median of {len(times)})"
    )
    if args.train_steps <= 3:
        return  # (the first three training steps are warm-up, not timed)
    # Training throughput: sequences of 50 reads, batch 256, as the reference.
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = 256, 50
    keys = torch.randint(2, vocab.key_size, (B, T), device=args.device)
    tpls = torch.randint(2, vocab.template_size, (B, T), device=args.device)
    feats = torch.randn(B, T, cfg.n_features, device=args.device)
    S = cfg.successors
    succ = (
        torch.rand(B, T, S, SUCC_FEATURES, device=args.device).round() if S else None
    )  # every head, as train()
    next_succ = torch.randint(0, S + 1, (B, T), device=args.device) if S else None
    next_copy = torch.randint(0, cfg.copy_slots + 1, (B, T), device=args.device)
    spans = []
    for step in range(args.train_steps):
        start = time.perf_counter()
        _, _, loss = model(
            keys,
            tpls,
            feats,
            None,
            keys.roll(-1, 1),
            tpls.roll(-1, 1),
            next_copy,
            succ=succ,
            next_succ=next_succ,
        )
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        if step >= 3:
            spans.append(time.perf_counter() - start)
    print(f"training, batch {B} x length {T}, {args.device}: {B / statistics.median(spans):,.0f} sequences/s")


def on_log(args: argparse.Namespace) -> None:
    """A trained model over a log's reads, as the live engine runs it: batches of ``--batch``
    reads in time order (each client's several reads in a batch included), by the batched stepper
    (``OnlineStepper.run``: host work once per batch, the LSTM in waves, the heads once) and by one
    ``step`` per read (the per-read path it replaced), alternating, a fresh stepper per pass.
    Reports the median over ``--repeats`` passes of each, in microseconds per read, and whether
    the two named the same keys."""
    from accesslog.log import READ_OPS, read_log
    from ml.registry import load_model

    if not args.log:
        raise SystemExit("mlbench: --model needs --log")
    model, vocab, _ = load_model(args.model, args.device)
    log = read_log(args.log)
    ops = log.column("op")
    rows = [
        (int(c), k, float(t))
        for k, t, c, op in zip(log.keys(), log.timestamps(), log.clients(), ops, strict=True)
        if op in READ_OPS  # (the proxy mirrors reads only)
    ]
    batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
    spans: dict[str, list[float]] = {"batched": []} if args.batched_only else {"batched": [], "per read": []}
    named: dict[str, list[list[str]]] = {}
    for _ in range(args.repeats):
        for how in spans:
            stepper = OnlineStepper(model, vocab, args.device)
            got: list[list[str]] = []
            start = time.perf_counter()
            for batch in batches:
                if how == "batched":
                    cands, _ = stepper.run(batch)
                else:
                    cands = [stepper.step([read])[0] for read in batch]
                got += [[k for k, _ in c] for c in cands]
            if args.device == "cuda":
                torch.cuda.synchronize()
            spans[how].append(time.perf_counter() - start)
            named[how] = got
    n = len(rows)
    same = sum(a == b for a, b in zip(named["batched"], named.get("per read", named["batched"]), strict=True))
    print(
        f"{args.model} over {n:,} reads of {args.log} in batches of {args.batch}, {args.device}, "
        f"{torch.get_num_threads()} torch threads, median of {args.repeats}:"
    )
    for how, times in spans.items():
        print(f"  {how:>9}: {statistics.median(times) / n * 1e6:6.1f} us per read")
    if not args.batched_only:
        print(f"  the same keys named for {same:,} of {n:,} reads")
    if args.parts:
        parts(model, vocab, batches, args.device, n)


def parts(model: Any, vocab: Any, batches: list[Any], device: str, n: int) -> None:
    """One batched pass with a timer around each part of the step (the timers' own cost lands in
    "the rest"): the model's matrix work, and the host's Python."""
    from ml.inference import stepper as stepper_module

    spent: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

        return run

    stepper = OnlineStepper(model, vocab, device)
    model.inputs = timed("model: embeddings and feature projection", model.inputs)
    model.step = timed("model: LSTM cells (per wave)", model.step)
    model.heads = timed("model: heads (key logits over the vocabulary...)", model.heads)
    top_probs = stepper_module.top_probs
    stepper_module.top_probs = timed("model: softmax and top-k", top_probs)
    stepper.features.values = timed("host: feature rows", stepper.features.values)
    if stepper.successors is not None:
        stepper.successors.after = timed("host: successor candidates", stepper.successors.after)
    composer = stepper.composer
    calls: list[tuple[Any, Any]] = []

    def kept(*a: Any, **k: Any) -> Any:
        calls.append((a, k))
        return composer(*a, **k)

    stepper.composer = timed("host: composing keys (templates, merge, top-k)", kept)
    try:
        start = time.perf_counter()
        for batch in batches:
            stepper.run(batch)
        total = time.perf_counter() - start
    finally:
        stepper_module.top_probs = top_probs
        for name in ("inputs", "step", "heads"):
            model.__dict__.pop(name, None)
    print(f"  one batched pass, by part ({total / n * 1e6:.1f} us per read in all):")
    for name, seconds in spent.items():
        print(f"    {name:<52} {seconds / n * 1e6:6.1f} us per read")
    rest = total - sum(spent.values())
    print(
        f"    {'host: the rest (tokens, tensors, waves, snapshots, timers)':<52} {rest / n * 1e6:6.1f} us per read"
    )
    # The same composing again on the same inputs, with no matrix work between: what the host's
    # Python costs when the model's sweeps through its weights have not just evicted its tables.
    start = time.perf_counter()
    for a, k in calls:
        composer(*a, **k)
    alone = time.perf_counter() - start
    print(f"    {'(composing keys again, alone, on the same inputs)':<52} {alone / n * 1e6:6.1f} us per read")


if __name__ == "__main__":
    main()
