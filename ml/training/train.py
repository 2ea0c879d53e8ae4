"""Training: time-ordered split, seeded, early stopping, mixed precision on a GPU, metrics saved.

predis train LOG -o MODEL_DIR [--epochs N] [--device auto|cpu|cuda] [--registry]
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accesslog.log import AccessLog
from ml.models.lstm.model import LSTMConfig, NextKeyLSTM
from ml.training.budget import GATED_REPLAY_COST, TimeBudget
from ml.training.data import encode, replay_slots_of, windows
from ml.training.precision import use_bf16
from ml.training.selection import (
    FLOORS,
    GATES,
    RANKER_BUDGET,
    RANKER_SPEC,
    REPLAY_SHARES,
    choose_gate_and_floor,
    fallback_candidates,
    fallback_replays_at,
    ranker_replay_seconds,
    replay_window,
    score_heuristics,
    workers,
)
from ml.vocab import Vocabulary


@dataclass
class TrainConfig:
    epochs: int = 8  # upper bound; early stopping usually ends sooner
    batch: int = 64  # windows per step
    length: int = 64  # reads per window
    lr: float = 3e-3
    weight_decay: float = 0.01
    split: float = 0.8  # the first 80% of reads (by time) train, the rest validate
    patience: int = 2  # epochs without a better validation loss before stopping
    seed: int = 0
    max_keys: int = 8_192
    max_templates: int = 1_024
    # The whole command's budget (the goal: a model in 10 minutes), checked before every training
    # step; the replays after the loop shrink to what is left (ml.training.budget).
    max_seconds: float = 600.0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on a GPU and on a CPU with native bf16, where the model runs in it (precision.py)
    progress: bool = True
    # Fine-tuning: start from this model (a model directory or registry) instead of from scratch: its
    # weights, and its vocabulary grown by the new reads' keys (ml.training.warmstart).
    init_from: str = ""
    # The learned ranker's fallback replays (ml.training.selection): "auto" runs them where the
    # budget holds them (before the loop, or after it if the loop ended early enough); "always"
    # before the loop whatever they cost; "never" leaves the fallback to the heuristics.
    ranker_replays: str = "auto"


def _add_ranker(enc: Any, n: int, cut: int, both: dict[float, Any], took: dict[str, float]) -> None:
    """The ranker's fallback replays, added to the heuristics' (``both``, as fallback_replays_at
    returns them)."""
    ranked = fallback_replays_at(enc, np.arange(n), cut, REPLAY_SHARES, seconds=took, specs=(RANKER_SPEC,))
    for share, (recent, long) in ranked.items():
        both[share][0].update(recent)
        both[share][1].update(long)


def _chosen_replay(candidates_by_share: dict[str, list[str]], heuristic: float, ranker: float) -> float:
    """The seconds of one replay at each size over each of its fallback candidates, summed per size
    (the ML arm is replayed over every candidate), averaged over the sizes."""
    return float(
        np.mean(
            [
                sum(ranker if f.split("@")[0] == RANKER_SPEC else heuristic for f in found)
                for found in candidates_by_share.values()
            ]
        )
    )


def fingerprint(log: AccessLog) -> str:
    h = hashlib.sha256()
    h.update(str(len(log)).encode())
    for col in ("key", "ts"):
        for chunk in log.table.column(col).chunks[:4]:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(memoryview(buf)[: 1 << 20])
    return h.hexdigest()[:16]


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from common.errors import ConfigError

        raise ConfigError("--device cuda: no CUDA device is available to torch here")
    return name


def _loss(
    loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    data: dict[str, torch.Tensor],
    rows: torch.Tensor,
    device: str,
    amp: bool,
) -> torch.Tensor:
    batch = {k: v[rows].to(device, non_blocking=True) for k, v in data.items() if k != "order"}
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
        return loss_of(batch)


def train(
    log: AccessLog,
    out_dir: str | Path,
    tcfg: TrainConfig | None = None,
    mcfg: LSTMConfig | None = None,
    registry: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Train on ``log`` and save the model to ``out_dir``; returns its metrics. ``clock`` times
    the command against ``tcfg.max_seconds`` (ml.training.budget)."""
    from ml.inference.arm import predict_streams
    from ml.registry import next_version, save_model, set_current
    from ml.training.distributed import agreed, rank_and_world, wrap
    from ml.training.evaluate import score

    tcfg = tcfg or TrainConfig()
    rank, world = rank_and_world()  # (several processes: ml.training.distributed)
    device = pick_device(tcfg.device)
    if device == "cuda" and world > 1:
        device = f"cuda:{rank}"
    amp = use_bf16(tcfg.precision, device)  # (before any work: bf16 where it cannot run is an error)
    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    n = len(log)
    cut = int(n * tcfg.split)
    from common.errors import ConfigError

    if tcfg.ranker_replays not in ("auto", "always", "never"):
        raise ConfigError(f"ranker_replays must be auto, always or never, got {tcfg.ranker_replays!r}")
    if cut < 2 or n - cut < 2:
        raise ConfigError(f"the log has {n} reads: too few to split into training and validation")
    budget = TimeBudget(tcfg.max_seconds, clock)
    codes, names = log.key_codes()
    train_names = names.take(codes[:cut]).to_pylist()  # the vocabulary sees the training part only
    old: tuple[Any, Any, Any] | None = None
    if tcfg.init_from:
        from ml.registry import load_model, resolve
        from ml.training.warmstart import grown_vocabulary

        old = load_model(tcfg.init_from)
        vocab = grown_vocabulary(old[1], train_names, tcfg.max_keys, tcfg.max_templates)
        mcfg = replace(old[0].cfg)  # (the architecture is the old model's; only the vocabulary grows)
    else:
        vocab = Vocabulary.build(train_names, tcfg.max_keys, tcfg.max_templates)
        mcfg = mcfg or LSTMConfig()
    enc = encode(log, vocab, successors=mcfg.successors, replay=replay_slots_of(mcfg))
    train_idx, val_idx = np.arange(cut), np.arange(cut, n)
    tr = windows(enc, train_idx, tcfg.length)
    va = windows(enc, val_idx, tcfg.length)
    budget.lap("encode")
    # What does not depend on the model runs first, so that its cost is known when the loop sets its
    # end: the online heuristics scored on the validation reads, and the replays that choose the
    # fallback and the eviction policy.
    heuristics = score_heuristics(enc, val_idx)
    budget.lap("compare")
    # The fallback for reads the model is unsure of, and the eviction policy to run under
    # (choose_fallback): from replays of the training log only, never of what the simulator
    # later judges.
    # Cache size matters (PG under S3-FIFO loses at 1% what it wins at 5%), so the pair is chosen
    # at four cache sizes; the simulator picks the one nearest its own (MLPredictor.choose).
    took: dict[str, float] = {}
    both = fallback_replays_at(enc, np.arange(n), cut, REPLAY_SHARES, seconds=took)
    rounds = math.ceil(len(took) / workers())
    heuristic_replay = budget.lap("fallback_replays") / rounds  # (one replay's wall, on a worker)
    # The learned ranker among them where its replays fit (RANKER_BUDGET of the budget) before the
    # loop; otherwise after it, if the loop ended early enough (patience) to leave room.
    ranker_seconds = ranker_replay_seconds(took, heuristic_replay * rounds)
    ranker_rounds = math.ceil(2 * len(REPLAY_SHARES) / workers())
    ranker_replay = ranker_seconds / ranker_rounds
    ranker_replays = f"skipped: estimated {ranker_seconds:.0f} s, more than the budget left"
    if tcfg.ranker_replays == "never":
        ranker_replays = "skipped: --ranker-replays never"
    elif tcfg.ranker_replays == "always" or ranker_seconds <= RANKER_BUDGET * tcfg.max_seconds:
        _add_ranker(enc, n, cut, both, took)
        ranker_replay = budget.lap("ranker_replays") / ranker_rounds
        ranker_replays = "run"
    by_share = {share: recent for share, (recent, _) in both.items()}
    # Keyed by the cache size in entries each share gave on the replayed window: a share of a
    # short training window is a much smaller cache than the same share of a whole trace.
    entries = {s: replay_window(enc, np.arange(n), cut, s)[2] for s in REPLAY_SHARES}
    candidates_by_share = {str(s): fallback_candidates(*both[s]) for s in REPLAY_SHARES}
    replays = by_share[0.05]  # (the same dicts the ranker's replays after the loop add to)
    # What the loop must leave room for follows from the cost of the replays after it, the ML arm
    # over the fallback candidates at each size (ml.training.budget): a heuristic's replay, and the
    # ranker's, which costs tens of a heuristic's, where it was replayed.
    chosen_replay = _chosen_replay(candidates_by_share, heuristic_replay, ranker_replay)
    budget.start_loop(
        chosen_replay,
        1,  # (one replay's seconds, run on each worker)
        workers(),
        {
            "gates": len(REPLAY_SHARES) * len(GATES),
            "floors": len(REPLAY_SHARES) * len(FLOORS),
            "one gate": len(REPLAY_SHARES),
        },
        val_windows=va["keys"].shape[0],
        batch=tcfg.batch,
    )
    mcfg.key_vocab, mcfg.template_vocab = vocab.key_size, vocab.template_size
    model = NextKeyLSTM(mcfg).to(device)
    warm_start = None
    if old is not None:
        from ml.training.warmstart import carry_weights

        carried = carry_weights(old[0], old[1], model, vocab)
        warm_start = {"from": str(resolve(tcfg.init_from)), "keys_carried": carried}
    trainer = wrap(model, device)  # (in DistributedDataParallel when there are several processes)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    gen = torch.Generator().manual_seed(tcfg.seed)
    best, best_state, stale, history = math.inf, None, 0, []
    steps_per_epoch = budget.steps_per_epoch = max(1, math.ceil(tr["keys"].shape[0] / tcfg.batch))
    for epoch in range(tcfg.epochs):
        if agreed(not budget.epoch_begins()):  # (the budget ends the loop between epochs too)
            break
        model.train()
        perm = torch.randperm(tr["keys"].shape[0], generator=gen)  # (the same in every process)
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}", tcfg.progress and rank == 0)
        total, done, seen = 0.0, 0, 0
        for s in range(steps_per_epoch):
            # Checked before every step, not only between epochs (every process stops together).
            if s and agreed(budget.stop_before_step()):
                break
            rows = perm[s * tcfg.batch : (s + 1) * tcfg.batch][rank::world]  # (this process's share)
            loss = _loss(trainer, tr, rows, device, amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item()
            done += 1
            seen += len(rows)
            budget.step_done()
            bar.update(1)
            bar.set_postfix(loss=f"{total / (s + 1):.3f}")
        bar.close()
        model.eval()
        val_start = budget.now()
        with torch.no_grad():
            val = [
                float(
                    _loss(
                        model.batch_loss, va, torch.arange(i, min(i + 256, va["keys"].shape[0])), device, amp
                    )
                )
                for i in range(0, va["keys"].shape[0], 256)
            ]
        budget.validated(budget.now() - val_start)
        val_loss = float(np.mean(val))
        history.append(
            {
                "epoch": epoch + 1,
                "steps": done,
                "rows": seen,  # (this process's share of the windows trained on)
                "train_loss": total / max(1, done),
                "val_loss": val_loss,
                "seconds": round(budget.now() - budget.loop_start, 1),
            }
        )
        if val_loss < best - 1e-4:
            best, stale = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        # Stop when patience runs out, or when the budget stopped this epoch short.
        if agreed(stale >= tcfg.patience or budget.stopped):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    train_seconds = budget.lap("train")
    if rank != 0:  # (rank 0 scores, replays and saves the model; the others' part is done)
        return {"rank": rank, "history": history}
    cands, conf, top_code = predict_streams(model, vocab, enc, val_idx, device=device)
    budget.lap("predict")
    one_gate = (
        GATED_REPLAY_COST * math.ceil(len(REPLAY_SHARES) / workers()) * (ranker_replay + heuristic_replay)
    )
    if (
        tcfg.ranker_replays == "auto"
        and ranker_replays != "run"
        and ranker_seconds + one_gate <= (tcfg.max_seconds - budget.now())
    ):
        _add_ranker(enc, n, cut, both, took)
        ranker_replay = budget.lap("ranker_replays") / ranker_rounds
        ranker_replays = "run after the loop"
        candidates_by_share = {str(s): fallback_candidates(*both[s]) for s in REPLAY_SHARES}
        budget.reprice(_chosen_replay(candidates_by_share, heuristic_replay, ranker_replay))
    # The replays below as far as the budget allows (all; no floors; one gate; none).
    plan = budget.plan_after_loop()
    chosen = choose_gate_and_floor(
        enc, n, cut, cands, conf, candidates_by_share, by_share, plan, floors_that_fit=budget.floors_that_fit
    )
    budget.lap("gate_floor_replays")
    fallback_by_share, gate_by_share = chosen["fallback_by_share"], chosen["gate_by_share"]
    floor_by_share = chosen["floor_by_share"]
    fallback, policy = fallback_by_share["0.05"].split("@")
    fallback_by_capacity = {str(entries[s]): fallback_by_share[str(s)] for s in REPLAY_SHARES}
    gate_by_capacity = {str(entries[s]): gate_by_share[str(s)] for s in REPLAY_SHARES}
    floor_by_capacity = {str(entries[s]): floor_by_share[str(s)] for s in REPLAY_SHARES}
    metrics = {
        "model": score(enc, val_idx, cands, conf, top_code),
        "heuristics": heuristics,
        "warm_start": warm_start,
        "fallback": fallback,
        "policy": policy,
        "fallback_hit_ratios": replays,
        "fallback_by_share": fallback_by_share,
        "fallback_hit_ratios_by_share": {str(s): r for s, r in by_share.items()},
        "fallback_hit_ratios_long_by_share": {str(s): long for s, (_, long) in both.items()},
        "ranker_replays": ranker_replays,  # (run, or skipped: the budget could not hold them)
        "fallback_candidates_by_share": candidates_by_share,
        "gated_hit_ratios": chosen["gated_hit_ratios"],
        "gated_hit_ratios_by_fallback": chosen["gated_hit_ratios_by_fallback"],
        "gate_by_share": gate_by_share,
        "fallback_by_capacity": fallback_by_capacity,
        "gate_by_capacity": gate_by_capacity,
        "floored_hit_ratios": chosen["floored_hit_ratios"],
        "floor_by_share": floor_by_share,
        "floor_by_capacity": floor_by_capacity,
        "history": history,
        "train_seconds": round(train_seconds, 1),
        "seconds": budget.laps,
        "time_budget": budget.report(),
        "train_reads": cut,
        "val_reads": n - cut,
        "device": device,
        "processes": world,
        "precision": "bf16" if amp else "fp32",
    }
    out = Path(out_dir)
    target = next_version(out) if registry else out
    save_model(
        model,
        vocab,
        target,
        train_config=tcfg.__dict__,
        fallback=fallback,
        policy=policy,
        fallback_by_share=fallback_by_share,
        gate_by_share=gate_by_share,
        fallback_by_capacity=fallback_by_capacity,
        gate_by_capacity=gate_by_capacity,
        floor_by_capacity=floor_by_capacity,
        data={"source": log.source, "reads": n, "fingerprint": fingerprint(log), "meta": log.meta},
        metrics=metrics,
    )
    (target / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if registry:
        set_current(out, target)
    metrics["model_dir"] = str(target)
    return metrics


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, mininterval=1.0)
