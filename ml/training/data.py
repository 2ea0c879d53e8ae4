"""From an access log to model inputs: tokens, features and per-client streams.

A client's reads form its own stream (the proxy sees one per connection): the model is trained to
predict, at each read, the next read of the same client. Logs without client ids are one stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from accesslog.log import AccessLog
from ml.features.offline import features
from ml.features.spec import FeatureConfig
from ml.vocab import PAD, Vocabulary, numbers_of


@dataclass
class Encoded:
    names: list[str]  # distinct keys, by code
    codes: np.ndarray  # (n,) key code per read
    ts: np.ndarray  # (n,)
    client: np.ndarray  # (n,) int64
    key_tok: np.ndarray  # (n,) key token per read
    tpl_tok: np.ndarray  # (n,) template token per read
    feats: np.ndarray  # (n, F) float32
    succ_codes: np.ndarray  # (n, S) key codes of the successor candidates after each read, -1 none
    succ_feats: np.ndarray  # (n, S, SUCC_FEATURES) float32
    succ_replay: int = 0  # of the S slots, the last this many are the client's replay candidates

    def __len__(self) -> int:
        return int(self.codes.size)


SUCC_FEATURES = 2  # per successor candidate: its share of the key's transitions, and whether it is known


class SuccessorCandidates:
    """Candidate generation from co-occurrence, for keys the vocabulary cannot name: after each read,
    the keys that most often followed it in the same client's stream (the client-aware Markov table,
    bounded), with features the model scores them by. The same object serves training (run over the
    log in time order) and the live stepper (one read at a time), so both see identical candidates.

    With ``replay`` slots (at most 3, the last ones), the client's own history adds candidates: the
    key that followed this one the last time this client read it, then that key's most frequent
    predecessor and successor in the tables. A client that walks a sequence with a shifting start
    (a game's view window moving by -1, 0 or +1) gets all three starts named, the shifted-back one
    included, which no client has read after this key yet."""

    def __init__(self, slots: int, max_keys: int = 100_000, replay: int = 0) -> None:
        from collections import OrderedDict

        from prefetch.predictors.markov import Markov

        if not 0 <= replay <= min(3, slots):
            raise ValueError(f"replay slots must be 0-3 and at most the {slots} slots, not {replay}")
        self.slots = slots
        self.replay = replay
        self.table = Markov(max_keys=max_keys, max_successors=slots)
        self.back = Markov(max_keys=max_keys, max_successors=4)  # predecessors: the table read backwards
        self.max_keys = max_keys
        self.followed: OrderedDict[tuple[int, str], str] = OrderedDict()  # (client, key) -> its next read

    def after(self, key: str, client: int) -> tuple[list[str], list[float]]:
        """Observe a read; its candidates and their features, flat: slot j's SUCC_FEATURES are
        ``feats[2j:2j+2]`` (zeros: no candidate). A list, not an array: the stepper makes one array
        of a batch's, and an array per read cost more than the rest of this method."""
        table = self.table
        previous = table.previous.get(client)
        table.observe(key, 0.0, False, client)
        found = table.predict(self.slots - self.replay)
        feats = [0.0] * (self.slots * SUCC_FEATURES)
        for j, (_, share) in enumerate(found):
            feats[2 * j] = share
            feats[2 * j + 1] = 1.0
        cands = [cand for cand, _ in found]
        if not self.replay:
            return cands, feats
        followed = self.followed
        if previous is not None:
            self.back.learn(key, previous)
            followed[(client, previous)] = key
            followed.move_to_end((client, previous))
            if len(followed) > self.max_keys:
                followed.popitem(last=False)
        base = self.slots - self.replay
        cands += [""] * (base - len(cands))  # ("": an empty slot)
        last_time = followed.get((client, key))
        if last_time is None:
            return cands + [""] * self.replay, feats
        before = self.back.successors(last_time, 1) or [("", 0.0)]
        after = table.successors(last_time, 1) or [("", 0.0)]
        for j, (cand, share) in enumerate([(last_time, 1.0), before[0], after[0]][: self.replay]):
            if cand and cand != key and cand not in cands:  # (each source keeps its own slot)
                cands.append(cand)
                feats[2 * (base + j)] = share
                feats[2 * (base + j) + 1] = 1.0
            else:
                cands.append("")
        return cands, feats


def replay_slots_of(cfg: Any) -> int:
    """A model config's replay slots (at most its successor slots; none in configs before them)."""
    return min(int(getattr(cfg, "replay_slots", 0)), int(getattr(cfg, "successors", 0)), 3)


def successor_candidates(
    names: list[str], codes: np.ndarray, client: np.ndarray, slots: int, replay: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``SuccessorCandidates`` over a whole log in time order: (n, slots) key codes (-1: none; a
    candidate is always a key read earlier) and (n, slots, SUCC_FEATURES) features."""
    n = codes.size
    out_codes = np.full((n, max(slots, 0)), -1, np.int64)
    out_feats = np.zeros((n, max(slots, 0), SUCC_FEATURES), np.float32)
    if slots <= 0:
        return out_codes, out_feats
    code_of = {name: i for i, name in enumerate(names)}
    code_of[""] = -1
    gen = SuccessorCandidates(slots, replay=replay)
    for i, (code, c) in enumerate(zip(codes.tolist(), client.tolist(), strict=True)):
        cands, feats = gen.after(names[code], c)
        if cands:
            out_codes[i, : len(cands)] = [code_of[k] for k in cands]
            out_feats[i].flat = feats
    return out_codes, out_feats


def with_successors(enc: Encoded, slots: int, replay: int = 0) -> Encoded:
    """``enc`` with ``slots`` successor candidates per read, ``replay`` of them from the client's
    history (computed now if it has others)."""
    if enc.succ_codes.shape[1] != slots or enc.succ_replay != replay:
        enc.succ_codes, enc.succ_feats = successor_candidates(enc.names, enc.codes, enc.client, slots, replay)
        enc.succ_replay = replay
    return enc


def encode(
    log: AccessLog, vocab: Vocabulary, cfg: FeatureConfig | None = None, successors: int = 0, replay: int = 0
) -> Encoded:
    codes, names_arr = log.key_codes()
    names = names_arr.to_pylist()
    key_of_code = np.array([vocab.key_token(k) for k in names], np.int64)
    tpl_of_code = np.array([vocab.template_token(k) for k in names], np.int64)
    client = log.clients()
    ts = log.timestamps()
    succ_codes, succ_feats = successor_candidates(names, codes, client, successors, replay)
    return Encoded(
        names,
        codes,
        ts,
        client,
        key_of_code[codes],
        tpl_of_code[codes],
        features(codes, ts, cfg),
        succ_codes,
        succ_feats,
        replay,
    )


def stream_order(client: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reads ``idx`` grouped by client in time order, and for each the position (in that
    order) of the same client's next read, or -1."""
    order = idx[np.argsort(client[idx], kind="stable")]
    same = np.r_[client[order][1:] == client[order][:-1], False]
    nxt = np.where(same, np.arange(order.size) + 1, -1)
    return order, nxt


RECENT = 8  # a client's last reads whose numbers may fill the next key's template
IGNORE = -100  # a target that is not one


def number_ids(names: list[str]) -> np.ndarray:
    """Per key code, an id of its tuple of numbers (0 for keys without numbers)."""
    index: dict[tuple[str, ...], int] = {(): 0}
    return np.array([index.setdefault(tuple(numbers_of(k)), len(index)) for k in names], np.int64)


def copy_targets(enc: Encoded, order: np.ndarray) -> np.ndarray:
    """For each read (in stream order), which of the client's last RECENT reads (0 = this one) has
    the numbers of the next read, so that the next key is its template filled with them; RECENT if
    none has (the next key has no numbers, or new ones)."""
    nums = number_ids(enc.names)[enc.codes[order]]
    clients = enc.client[order]
    n = order.size
    nxt_nums = np.r_[nums[1:], 0]
    same_next = np.r_[clients[1:] == clients[:-1], False]
    target = np.full(n, RECENT, np.int64)
    for j in range(RECENT - 1, -1, -1):  # the latest match wins: assign the farthest first
        prev_nums = np.r_[np.zeros(j, np.int64), nums[: n - j]]
        prev_client = np.r_[np.full(j, -1, np.int64), clients[: n - j]]
        match = (prev_nums == nxt_nums) & (nxt_nums != 0) & (prev_client == clients) & same_next
        target[match] = j
    return target


def windows(enc: Encoded, idx: np.ndarray, length: int) -> dict[str, torch.Tensor]:
    """Training windows of ``length`` reads over the client streams of ``idx``; targets are each
    read's next read in its stream (PAD where a stream ends)."""
    order, nxt = stream_order(enc.client, idx)
    n = order.size
    has_next = nxt >= 0
    next_read = order[np.where(has_next, nxt, 0)]
    y_key = np.where(has_next, enc.key_tok[next_read], PAD)
    y_tpl = np.where(has_next, enc.tpl_tok[next_read], PAD)
    y_copy = np.where(has_next, copy_targets(enc, order), IGNORE)
    # The successor slot holding the next key (slots: none of them).
    succ = enc.succ_codes[order]
    slots = succ.shape[1]
    if slots:
        hit = succ == enc.codes[next_read][:, None]
        y_succ = np.where(hit.any(1), hit.argmax(1), slots)
    else:
        y_succ = np.zeros(n, np.int64)
    y_succ = np.where(has_next, y_succ, IGNORE)
    pad = (-n) % length

    def shape(a: np.ndarray, fill: float = 0) -> np.ndarray:
        a = np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)])
        return a.reshape((-1, length) + a.shape[1:])

    out = {
        "keys": torch.as_tensor(shape(enc.key_tok[order])),
        "templates": torch.as_tensor(shape(enc.tpl_tok[order])),
        "feats": torch.as_tensor(shape(enc.feats[order])),
        "next_keys": torch.as_tensor(shape(y_key)),
        "next_templates": torch.as_tensor(shape(y_tpl)),
        "next_copy": torch.as_tensor(shape(y_copy, IGNORE)),
        "order": torch.as_tensor(shape(order, -1)),
    }
    if slots:
        out["succ"] = torch.as_tensor(shape(enc.succ_feats[order]))
        out["next_succ"] = torch.as_tensor(shape(y_succ, IGNORE))
    return out
