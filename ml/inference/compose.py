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
