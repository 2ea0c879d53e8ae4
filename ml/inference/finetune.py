"""The simulator's ML arm learning while it replays (issue 21): the model fine-tuned on the reads it
has seen, every so many reads, as the live pipeline retrains and swaps a model in (issue 22).

The trace is cut into spans of ``every`` reads in time order. Each span's candidates come from the
model as it stands when the span begins; then the model is fine-tuned, warm (its weights, its
optimiser's state kept from one span to the next), for ``steps`` gradient steps on windows of the
last ``window`` reads, that span's included, and the next span is predicted by the fine-tuned
model. Its client states are warmed first on the ``warm`` reads before the span, as the live arm
warms a swapped-in model on its latest reads (``ml.inference.live``), not carried over from the
weights before.

Nothing is learnt from a read before its span is predicted: a window's targets are the next read
of each client within the window, so the reads after the span's end are never seen. The
vocabulary stays the model's: keys new since training reach it as UNK (its successor and template
candidates still name them), as they do the frozen model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ml.inference.candidates import Candidates

WARM_READS = 4_096  # as the live arm warms a swapped-in model's client states


def predict_finetuning(
    predict: Callable[..., tuple[Candidates, np.ndarray, np.ndarray]],
    model: Any,
    vocab: Any,
    enc: Any,
    every: int,
    steps: int = 20,
    window: int = 0,
    lr: float = 1e-3,
    batch: int = 32,
    length: int = 256,
    warm: int = WARM_READS,
    seed: int = 0,
    device: str = "cpu",
    k: int = 10,
) -> tuple[Candidates, np.ndarray, dict[str, Any]]:
    """Every read's candidates and confidence, as ``predict`` (``ml.inference.arm.predict_streams``)
    gives them over the whole trace, but with the model fine-tuned after each span of ``every``
    reads on the last ``window`` reads (``every`` when 0); and a record of the fine-tunings (the
    first and last step's loss, per span)."""
    from ml.training.data import windows

    if every < 1 or steps < 0 or window < 0:
        raise ValueError(
            f"fine-tuning needs every >= 1, steps >= 0, window >= 0; got {every}, {steps}, {window}"
        )
    window = window or every
    n = len(enc)
    cands = Candidates(n, k, enc.names)
    conf = np.zeros(n, np.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    spans: list[dict[str, Any]] = []
    for start in range(0, n, every):
        end = min(n, start + every)
        lo = max(0, start - warm)
        # The warm reads' rows hold the span before's candidates: kept, not overwritten.
        kept = cands.codes[lo:start].copy(), cands.scores[lo:start].copy()
        _, span_conf, _ = predict(model, vocab, enc, np.arange(lo, end), k, device=device, into=cands)
        cands.codes[lo:start], cands.scores[lo:start] = kept
        conf[start:end] = span_conf[start:end]
        if end == n or not steps:
            continue
        data = windows(enc, np.arange(max(0, end - window), end), length)
        rows_total = data["keys"].shape[0]
        model.train()
        losses = []
        for _ in range(steps):
            rows = torch.randint(rows_total, (min(batch, rows_total),), generator=gen)
            batch_data = {name: v[rows].to(device) for name, v in data.items() if name != "order"}
            loss = model.batch_loss(batch_data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        model.eval()
        spans.append({"at": end, "windows": rows_total, "loss_first": losses[0], "loss_last": losses[-1]})
    return cands, conf, {"every": every, "steps": steps, "window": window, "lr": lr, "spans": spans}
