"""Next-key metrics on a client-stream split: top-1 and top-k accuracy, recall@k within the next W
reads of the same client, and calibration of the confidence head; the same for heuristics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.training.data import Encoded, stream_order


def score(
    enc: Encoded,
    idx: np.ndarray,
    cands: Sequence[list[tuple[str, float]]],
    conf: np.ndarray | None = None,
    top_code: np.ndarray | None = None,
    k: int = 10,
    window: int = 10,
) -> dict[str, float]:
    """Metrics over the reads ``idx``, each judged within its client's stream:

    * top-1 / top-k: the next read's key is the first / among the first k predicted;
    * recall@k within W: the share of reads whose key was among the top-k predicted after at least
      one of the same client's W previous reads, i.e. a prefetch made in time would have covered
      it (the first W reads of each stream count against it);
    * calibration (ECE) of the confidence against whether the model's top prediction (the first
      of its composed list, whichever head named it: ``top_code``) was right.
    """
    order, nxt = stream_order(enc.client, idx)
    clients = enc.client[order]
    names = [enc.names[c] for c in enc.codes[order]]
    top1 = topk = recalled = 0
    counted = 0
    recent: list[set[str]] = []
    for pos, read in enumerate(order):
        if pos and clients[pos] != clients[pos - 1]:
            recent = []
        if recent and any(names[pos] in s for s in recent[-window:]):
            recalled += 1
        predicted = [key for key, _ in cands[read][:k]]
        recent.append(set(predicted))
        if nxt[pos] < 0:
            continue
        counted += 1
        top1 += bool(predicted) and predicted[0] == names[pos + 1]
        topk += names[pos + 1] in predicted
    out = {
        "reads": counted,
        "top1": top1 / max(1, counted),
        f"top{k}": topk / max(1, counted),
        f"recall@{k}_within_{window}": recalled / max(1, order.size),
    }
    if conf is not None and top_code is not None:
        has_next = nxt >= 0
        nexts = order[np.where(has_next, nxt, 0)]
        right = top_code[order] == enc.codes[nexts]
        out["calibration_ece"] = ece(conf[order][has_next], right[has_next].astype(float))
        out["mean_confidence"] = float(conf[order][has_next].mean())
        out["model_top1"] = float(right[has_next].mean())
    return out


def ece(conf: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |mean confidence - accuracy| averaged over confidence bins."""
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(conf[mask].mean() - right[mask].mean())
    return float(total / conf.size)


def heuristic_predictions(enc: Encoded, spec: str, k: int = 10) -> list[list[tuple[str, float]]]:
    """A heuristic's top-k after every read, fed client by client (each stream in time order)."""
    from prefetch.predictors import make_predictor

    predictor = make_predictor(spec)
    order, _ = stream_order(enc.client, np.arange(len(enc)))
    out: list[list[tuple[str, float]]] = [[] for _ in range(len(enc))]
    for read in order.tolist():
        predictor.observe(enc.names[enc.codes[read]], float(enc.ts[read]), False)
        out[read] = predictor.predict(k)
    return out


def compare_heuristics(
    enc: Encoded,
    idx: np.ndarray,
    specs: tuple[str, ...] = ("markov", "mithril"),
    k: int = 10,
    window: int = 10,
) -> dict[str, Any]:
    return {spec: score(enc, idx, heuristic_predictions(enc, spec, k), k=k, window=window) for spec in specs}
