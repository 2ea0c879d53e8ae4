"""Turning the model's outputs into keys. Candidates for the next read of a client are (a) the
key head's most likely keys and (b) the template head's most likely templates filled with the
numbers of the keys this client read last (see :mod:`ml.vocab`). A key reached both ways keeps the
higher score.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from operator import itemgetter

import numpy as np
import torch

from ml.vocab import Vocabulary, fill, numbers_of

TOP_KEYS = 10  # key-head candidates per read
TOP_TEMPLATES = 3  # template-head candidates per read


def top_probs(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest softmax probabilities over the last axis and their indices, as numpy arrays.
    (On the CPU the fused softmax then top-k is faster than top-k of the logits and a logsumexp.)"""
    top = torch.softmax(logits.float(), -1).topk(k, dim=-1)
    return top.values.cpu().numpy(), top.indices.cpu().numpy()


_SCORE = itemgetter(1)


def compose(
    vocab: Vocabulary,
    key_ids: Sequence[int],
    key_probs: Sequence[float],
    tpl_ids: Sequence[int],
    tpl_probs: Sequence[float],
    recent: Sequence[str],
    k: int,
    copy_probs: Sequence[float] = (),
    succ_keys: Sequence[str] = (),
    succ_probs: Sequence[float] = (),
) -> list[tuple[str, float]]:
    """Merge the key head's keys with templates filled in from recent reads. Filling template t
    with the numbers of the j-th latest read scores p(t) x p(copy j), the copy head's chance that
    the next key takes that read's numbers (``recent`` is oldest first, ``copy_probs`` latest first).
    The successor head's candidates (keys seen to follow this one) score their slot's probability."""
    scores: dict[str, float] = {}
    key_of = vocab.key_of
    for tok, p in zip(key_ids, key_probs, strict=True):
        key = key_of(tok)
        if key is not None and p > scores.get(key, 0.0):
            scores[key] = p
    for key, p in zip(succ_keys, succ_probs, strict=True):
        if key and p > scores.get(key, 0.0):  # ("": an empty slot)
            scores[key] = p
    # Latest first, as copy_probs; each read's numbers are found once, when first needed.
    weights = list(zip(reversed(recent), copy_probs, strict=False))  # (copy_probs ends with "none")
    best_weight = max((w for _, w in weights), default=0.0)
    numbers: dict[int, list[str]] = {}
    just_read = recent[-1] if recent else None
    for tok, p in zip(tpl_ids, tpl_probs, strict=True):
        if p * best_weight <= 0.01:
            continue  # (no read's numbers can lift this template over the floor)
        template = vocab.template_name(tok)
        if template is None or "#" not in template:
            continue
        for j, (prev, weight) in enumerate(weights):
            score = p * weight
            if score <= 0.01:
                continue
            found = numbers.get(j)
            if found is None:
                found = numbers[j] = numbers_of(prev)
            key = fill(template, found)
            if key is not None and key != just_read and score > scores.get(key, 0.0):
                scores[key] = score
    ranked = heapq.nlargest(k, scores.items(), key=_SCORE)  # (the same order as a stable sort)
    return [(key, s if s < 1.0 else 1.0) for key, s in ranked]


class BatchComposer:
    """``compose`` for a batch of reads at once, with identical results (keys, scores and their
    order): the key head's names come from one indexed lookup, the template-times-copy scores of
    every read from one array product in float64 (as Python multiplies the float32 outputs), and
    only the (read, template, recent read) triples over the floor reach Python, each read's numbers
    and each filled template found once per batch."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.key_names = np.array([None, None, *vocab.keys], dtype=object)
        # Each template as a format string and its slot count: fill() without splitting it per call.
        self.formats: list[tuple[str, int]] = [("", -1), ("", -1)] + [
            (t.replace("{", "{{").replace("}", "}}").replace("#", "{}"), t.count("#"))
            for t in vocab.templates
        ]
        self.fillable = np.array([False, False, *("#" in t for t in vocab.templates)])

    def __call__(
        self,
        ki: np.ndarray,  # (n, K) key-head tokens
        kp: np.ndarray,  # (n, K) their probabilities
        ti: np.ndarray,  # (n, T) template tokens
        tp: np.ndarray,  # (n, T) their probabilities
        copy: np.ndarray,  # (n, C) copy-head probabilities, latest read first ("none" last)
        latest: Sequence[Sequence[str]],  # per read: its client's reads, latest (itself) first
        k: int,
        succ_keys: Sequence[Sequence[str]] = (),
        succ_probs: np.ndarray | None = None,  # (n, S + 1)
    ) -> list[list[tuple[str, float]]]:
        n = len(latest)
        names = self.key_names[ki].tolist()
        probs = kp.tolist()
        tables: list[dict[str, float]] = []
        sp = succ_probs.tolist() if succ_probs is not None else None
        for j in range(n):
            scores = {
                key: p for key, p in zip(names[j], probs[j], strict=True) if key is not None and p > 0.0
            }
            if sp is not None:
                row = sp[j]
                for s, key in enumerate(succ_keys[j]):
                    p = row[s]
                    if key and p > scores.get(key, 0.0):
                        scores[key] = p
            tables.append(scores)
        width = min(copy.shape[1], max((len(r) for r in latest), default=0))
        if width:
            score = tp.astype(np.float64)[:, :, None] * copy[:, None, :width].astype(np.float64)
            depth = np.fromiter((len(r) for r in latest), np.int64, n)
            mask = (score > 0.01) & self.fillable[ti][:, :, None]
            mask &= np.arange(width)[None, None, :] < depth[:, None, None]
            rows, cols, backs = np.nonzero(mask)  # (in read, template, recency order: compose's)
            if rows.size:
                formats = self.formats
                numbers: dict[str, list[str]] = {}
                filled: dict[tuple[int, str], str | None] = {}
                tokens = ti[rows, cols].tolist()
                for j, tok, back, s in zip(
                    rows.tolist(), tokens, backs.tolist(), score[rows, cols, backs].tolist(), strict=True
                ):
                    prev = latest[j][back]
                    key = filled.get((tok, prev), "")
                    if key == "":
                        found = numbers.get(prev)
                        if found is None:
                            found = numbers[prev] = numbers_of(prev)
                        form, slots = formats[tok]
                        key = filled[(tok, prev)] = form.format(*found) if slots == len(found) else None
                    scores = tables[j]
                    if key is not None and key != latest[j][0] and s > scores.get(key, 0.0):
                        scores[key] = s
        out = []
        for scores in tables:
            ranked = sorted(scores.items(), key=_SCORE, reverse=True)[:k]  # (nlargest's order, faster here)
            out.append([(key, s if s < 1.0 else 1.0) for key, s in ranked])
        return out
