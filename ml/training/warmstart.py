"""Fine-tuning's warm start: a trained model carried onto a vocabulary grown from recent reads.

A model's key and template vocabularies are fixed when it is trained, so a model fine-tuned on reads
of keys it never saw could not name them. ``grown_vocabulary`` builds the candidate's vocabulary as
the recent reads' most frequent keys and templates (as training from scratch would), then fills what
room is left with the old model's, so it forgets only what no longer fits. ``carry_weights`` copies
every weight of the old model into the new one, and for the four tables indexed by a token (the key
and template embeddings, the key and template heads) copies each token's row to its new position;
rows of tokens new to the vocabulary keep their fresh initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ml.models.lstm.model import NextKeyLSTM
from ml.vocab import Vocabulary

# (parameter name, which vocabulary indexes its first dimension)
TOKEN_ROWS = (
    ("key_emb.weight", "keys"),
    ("key_head.weight", "keys"),
    ("key_head.bias", "keys"),
    ("template_emb.weight", "templates"),
    ("template_head.weight", "templates"),
    ("template_head.bias", "templates"),
)


def grown_vocabulary(old: Vocabulary, names: Sequence[str], max_keys: int, max_templates: int) -> Vocabulary:
    recent = Vocabulary.build(names, max_keys, max_templates)
    keys = recent.keys + [k for k in old.keys if k not in recent.key_index]
    templates = recent.templates + [t for t in old.templates if t not in recent.template_index]
    return Vocabulary(keys[:max_keys], templates[:max_templates])


def _row_map(old: Vocabulary, new: Vocabulary, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(new rows, old rows) of the tokens both vocabularies have, PAD and UNK included."""
    old_index = old.key_index if which == "keys" else old.template_index
    new_names = new.keys if which == "keys" else new.templates
    pairs = [(0, 0), (1, 1)] + [
        (i + 2, old_index[name]) for i, name in enumerate(new_names) if name in old_index
    ]
    dst, src = zip(*pairs, strict=True)
    return torch.tensor(dst), torch.tensor(src)


def carry_weights(old_model: NextKeyLSTM, old: Vocabulary, new_model: NextKeyLSTM, new: Vocabulary) -> int:
    """Copies ``old_model``'s weights into ``new_model`` (same sizes but the vocabularies'); returns
    how many key tokens kept their learnt rows."""
    old_state = old_model.state_dict()
    state = new_model.state_dict()
    maps = {which: _row_map(old, new, which) for which in ("keys", "templates")}
    token_rows = dict(TOKEN_ROWS)
    for name, tensor in state.items():
        src = old_state[name].to(tensor.device)
        if name in token_rows:
            dst_rows, src_rows = maps[token_rows[name]]
            tensor[dst_rows.to(tensor.device)] = src[src_rows.to(tensor.device)].to(tensor.dtype)
        elif src.shape != tensor.shape:
            raise ValueError(
                f"{name}: the model to fine-tune has shape {tuple(src.shape)}, not {tuple(tensor.shape)}"
            )
        else:
            tensor.copy_(src)
    new_model.load_state_dict(state)
    return int(maps["keys"][0].numel()) - 2
