"""The vocabulary: bounded, and open to keys it has never seen.

A softmax over every key neither scales nor names a new key, so a key is seen two ways:

* its *key token*: one of the ``max_keys`` most frequent keys of the training data, or UNK;
* its *template token*: the key with each run of digits replaced by ``#`` (``user:#:cart``), one of
  the ``max_templates`` most frequent templates, or UNK.

The model predicts both. A predicted template is turned back into keys by filling its ``#`` slots
with the numbers of keys the same client read recently (``product:#:inventory`` after
``product:8812`` gives ``product:8812:inventory``), so structured keys outside the vocabulary are
still predicted. Memory is bounded by the two sizes whatever the number of distinct keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from common.keyshape import fill, numbers_of, template_of

PAD, UNK = 0, 1

__all__ = ["PAD", "UNK", "Vocabulary", "fill", "numbers_of", "template_of"]


class Vocabulary:
    def __init__(self, keys: Sequence[str], templates: Sequence[str]) -> None:
        self.keys = list(keys)  # token i + 2 -> key
        self.templates = list(templates)
        self.key_index = {k: i + 2 for i, k in enumerate(self.keys)}
        self.template_index = {t: i + 2 for i, t in enumerate(self.templates)}

    @classmethod
    def build(cls, keys: Iterable[str], max_keys: int = 16_384, max_templates: int = 1_024) -> Vocabulary:
        counts = Counter(keys)
        tcounts: Counter[str] = Counter()
        for key, c in counts.items():
            tcounts[template_of(key)] += c
        top = [k for k, _ in counts.most_common(max_keys)]
        return cls(top, [t for t, _ in tcounts.most_common(max_templates)])

    @property
    def key_size(self) -> int:
        return len(self.keys) + 2

    @property
    def template_size(self) -> int:
        return len(self.templates) + 2

    def key_token(self, key: str) -> int:
        return self.key_index.get(key, UNK)

    def template_token(self, key: str) -> int:
        return self.template_index.get(template_of(key), UNK)

    def key_of(self, token: int) -> str | None:
        return self.keys[token - 2] if token >= 2 else None

    def template_name(self, token: int) -> str | None:
        return self.templates[token - 2] if token >= 2 else None

    def to_json(self) -> dict[str, Any]:
        return {"keys": self.keys, "templates": self.templates}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(list(data["keys"]), list(data["templates"]))
