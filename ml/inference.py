"""Turning the model's outputs into keys, and the ML predictor the simulator (and proxy) call.

Candidates for the next read of a client are (a) the key head's most likely keys and (b) the
template head's most likely templates filled with the numbers of the keys this client read last
(see :mod:`ml.vocab`). A key reached both ways keeps the higher score.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ml.vocab import Vocabulary, fill, numbers_of

TOP_KEYS = 10  # key-head candidates per read
TOP_TEMPLATES = 3  # template-head candidates per read
RECENT = 4  # a client's last reads whose numbers fill templates


def compose(
    vocab: Vocabulary,
    key_ids: Sequence[int],
    key_probs: Sequence[float],
    tpl_ids: Sequence[int],
    tpl_probs: Sequence[float],
    recent: Sequence[str],
    k: int,
) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for tok, p in zip(key_ids, key_probs, strict=True):
        key = vocab.key_of(tok)
        if key is not None and p > scores.get(key, 0.0):
            scores[key] = p
    just_read = set(recent)
    for tok, p in zip(tpl_ids, tpl_probs, strict=True):
        template = vocab.template_name(tok)
        if template is None or "#" not in template:
            continue
        for rank, prev in enumerate(reversed(recent)):
            key = fill(template, numbers_of(prev))
            # A key the client has just read is cached already; naming it again wastes a slot.
            if key is not None and key not in just_read:
                # The template's chance, split over the ways of filling it, favouring the latest
                # read: at most half, so a confident key-head prediction outranks it.
                score = p / (2 + rank)
                if score > scores.get(key, 0.0):
                    scores[key] = score
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:k]
    return [(key, min(1.0, s)) for key, s in ranked]


@torch.no_grad()
def predict_streams(
    model: Any,
    vocab: Vocabulary,
    enc: Any,
    idx: np.ndarray,
    k: int = 10,
    batch: int = 64,
    length: int = 256,
    device: str = "cpu",
) -> tuple[list[list[tuple[str, float]]], np.ndarray, np.ndarray]:
    """For each read in ``idx`` (indices into ``enc``): the model's top-k next keys of its client, its
    confidence, and the key head's top token; each client's stream runs once, state carried forward."""
    from ml.training.data import stream_order

    order, _ = stream_order(enc.client, idx)
    cands: list[list[tuple[str, float]]] = [[] for _ in range(len(enc))]
    conf = np.zeros(len(enc), np.float32)
    top_token = np.zeros(len(enc), np.int64)
    # Cut every client's stream into chunks of `length`; chunk j of a stream continues from chunk
    # j-1's state, so chunks are processed in rounds: round j holds every stream's j-th chunk.
    clients = enc.client[order]
    starts = np.flatnonzero(np.r_[True, clients[1:] != clients[:-1]])
    ends = np.r_[starts[1:], order.size]
    streams = [order[s:e] for s, e in zip(starts, ends, strict=True)]
    states: dict[int, Any] = {}
    rounds = max((len(s) + length - 1) // length for s in streams) if streams else 0
    for r in range(rounds):
        live = [i for i, s in enumerate(streams) if len(s) > r * length]
        for b in range(0, len(live), batch):
            group = live[b : b + batch]
            chunks = [streams[i][r * length : (r + 1) * length] for i in group]
            width = max(len(c) for c in chunks)
            rows = np.stack([np.r_[c, np.full(width - len(c), c[-1])] for c in chunks])
            keys = torch.as_tensor(enc.key_tok[rows], device=device)
            tpls = torch.as_tensor(enc.tpl_tok[rows], device=device)
            feats = torch.as_tensor(enc.feats[rows], device=device)
            h0 = [states.get(i) for i in group]
            state = None
            if any(s is not None for s in h0):
                zeros = (torch.zeros(model.cfg.layers, model.cfg.hidden, device=device),) * 2
                hs = [s if s is not None else zeros for s in h0]
                state = (torch.stack([s[0] for s in hs], 1), torch.stack([s[1] for s in hs], 1))
            out, (h, c), _ = model(keys, tpls, feats, state)
            # Only a stream's last chunk can be shorter than the others, so a padded row's state is
            # never needed again.
            for j, i in enumerate(group):
                states[i] = (h[:, j].clone(), c[:, j].clone())
            key_top = torch.softmax(out["key_logits"].float(), -1).topk(TOP_KEYS, dim=-1)
            tpl_top = torch.softmax(out["template_logits"].float(), -1).topk(TOP_TEMPLATES, dim=-1)
            kp, ki = key_top.values.cpu().numpy(), key_top.indices.cpu().numpy()
            tp, ti = tpl_top.values.cpu().numpy(), tpl_top.indices.cpu().numpy()
            cf = torch.sigmoid(out["confidence"].float()).cpu().numpy()
            for j, chunk in enumerate(chunks):
                recent: deque[str] = deque(maxlen=RECENT)
                stream = streams[group[j]]
                for prev in stream[max(0, r * length - RECENT) : r * length]:
                    recent.append(enc.names[enc.codes[prev]])
                for t, read in enumerate(chunk):
                    recent.append(enc.names[enc.codes[read]])
                    cands[read] = compose(
                        vocab,
                        ki[j, t].tolist(),
                        kp[j, t].tolist(),
                        ti[j, t].tolist(),
                        tp[j, t].tolist(),
                        recent,
                        k,
                    )
                    conf[read] = cf[j, t]
                    top_token[read] = ki[j, t, 0]
    return cands, conf, top_token


class MLPredictor:
    """The model as a simulator arm. Candidates for every read of the trace are computed up front in
    batches (the model's state depends only on the reads, not on the cache) and served one read at a
    time. The confidence head gates a fallback heuristic: at or above ``min_confidence`` the model's
    candidates come first and the fallback's fill the rest; below it, the other way round. Keys the
    vocabulary does not know reach the model as UNK and the fallback still sees them by name."""

    name = "ml"

    def __init__(
        self,
        model_dir: str,
        log: Any,
        fallback: str = "markov",
        min_confidence: float = 0.5,
        device: str = "cpu",
    ) -> None:
        from ml.registry import load_model
        from ml.training.data import encode
        from prefetch.predictors import make_predictor

        model, vocab, manifest = load_model(model_dir, device)
        self.manifest = manifest
        enc = encode(log, vocab)
        self.cands, self.conf, _ = predict_streams(model, vocab, enc, np.arange(len(enc)), device=device)
        self.fallback = make_predictor(fallback)
        self.min_confidence = min_confidence
        self.max_footprint = self.fallback.max_footprint + 1
        self.i = -1
        self.model_first = 0

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.i += 1
        self.fallback.observe(key, t, hit, client)

    def predict(self, k: int) -> list[tuple[str, float]]:
        i = self.i
        mine = self.cands[i] if 0 <= i < len(self.cands) else []
        theirs = self.fallback.predict(k)
        if mine and self.conf[i] >= self.min_confidence:
            self.model_first += 1
            first, second = mine, theirs
        else:
            first, second = theirs, mine
        out: list[tuple[str, float]] = []
        seen: set[str] = set()
        ceiling = 1.0
        for key, score in (*first, *second):
            if key in seen:
                continue
            seen.add(key)
            ceiling = min(ceiling, score)  # keep scores descending across the two lists
            out.append((key, ceiling))
            if len(out) >= k:
                break
        return out

    def footprint(self) -> int:
        return self.fallback.footprint() + 1
