"""From an access log to model inputs: tokens, features and per-client streams.

A client's reads form its own stream (the proxy sees one per connection): the model is trained to
predict, at each read, the next read of the same client. Logs without client ids are one stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ml.data.log import AccessLog
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

    def __len__(self) -> int:
        return int(self.codes.size)


def encode(log: AccessLog, vocab: Vocabulary, cfg: FeatureConfig | None = None) -> Encoded:
    codes, names_arr = log.key_codes()
    names = names_arr.to_pylist()
    key_of_code = np.array([vocab.key_token(k) for k in names], np.int64)
    tpl_of_code = np.array([vocab.template_token(k) for k in names], np.int64)
    client = log.clients()
    ts = log.timestamps()
    return Encoded(names, codes, ts, client, key_of_code[codes], tpl_of_code[codes], features(codes, ts, cfg))


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
    pad = (-n) % length

    def shape(a: np.ndarray, fill: float = 0) -> np.ndarray:
        a = np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)])
        return a.reshape((-1, length) + a.shape[1:])

    return {
        "keys": torch.as_tensor(shape(enc.key_tok[order])),
        "templates": torch.as_tensor(shape(enc.tpl_tok[order])),
        "feats": torch.as_tensor(shape(enc.feats[order])),
        "next_keys": torch.as_tensor(shape(y_key)),
        "next_templates": torch.as_tensor(shape(y_tpl)),
        "next_copy": torch.as_tensor(shape(y_copy, IGNORE)),
        "order": torch.as_tensor(shape(order, -1)),
    }
