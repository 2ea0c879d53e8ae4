"""The next-key LSTM: key and template embeddings plus access features into a multi-layer LSTM,
with a next-key head, a next-template head and a confidence head.

Shapes: B batch, T time steps, F features, V key tokens, K template tokens, H hidden size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ml.features.spec import FEATURES
from ml.training.data import SUCC_FEATURES


@dataclass
class LSTMConfig:
    key_vocab: int = 16_386  # key tokens: PAD, UNK and the 16,384 most frequent keys
    template_vocab: int = 1_026  # template tokens: PAD, UNK and the 1,024 most frequent templates
    n_features: int = len(FEATURES)  # per-access features (ml.features.spec)
    key_dim: int = 64  # key embedding size
    template_dim: int = 16  # template embedding size
    feature_dim: int = 16  # the features are projected to this size
    hidden: int = 128  # LSTM hidden size
    layers: int = 2  # LSTM layers
    dropout: float = 0.1  # between LSTM layers, in training only
    copy_slots: int = 8  # the copy head points at one of the client's last reads (or none)
    successors: int = 8  # the successor head scores this many co-occurrence candidates (0: no head)
    succ_dim: int = 32  # its scoring layer's width
    # Of the successor slots, the last this many hold candidates from the client's own history
    # (ml.training.data.SuccessorCandidates): what followed this key the last time the client read
    # it, and that key's most frequent predecessor and successor. 0-3; models saved before it: 0.
    replay_slots: int = 3

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class NextKeyLSTM(nn.Module):
    def __init__(self, cfg: LSTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.key_emb = nn.Embedding(cfg.key_vocab, cfg.key_dim, padding_idx=0)
        self.template_emb = nn.Embedding(cfg.template_vocab, cfg.template_dim, padding_idx=0)
        self.feature_proj = nn.Linear(cfg.n_features, cfg.feature_dim)
        self.lstm = nn.LSTM(
            cfg.key_dim + cfg.template_dim + cfg.feature_dim,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.key_head = nn.Linear(cfg.hidden, cfg.key_vocab)
        self.template_head = nn.Linear(cfg.hidden, cfg.template_vocab)
        # Which recent read's numbers fill the next key's template (slot copy_slots: none of them).
        self.copy_head = nn.Linear(cfg.hidden, cfg.copy_slots + 1)
        # Scores the successor candidates (keys seen to follow the current one, named even when the
        # vocabulary cannot): the LSTM state and each candidate's features, plus a "none" slot.
        if cfg.successors:
            self.succ_state = nn.Linear(cfg.hidden, cfg.succ_dim)
            self.succ_feat = nn.Linear(SUCC_FEATURES, cfg.succ_dim)
            self.succ_slot = nn.Embedding(cfg.successors, cfg.succ_dim)
            self.succ_out = nn.Linear(cfg.succ_dim, 1)
            self.succ_none = nn.Linear(cfg.hidden, 1)
        # Trained to predict whether the model's top prediction (the key head's or the successor
        # head's, whichever is surer) is right.
        self.confidence_head = nn.Linear(cfg.hidden, 1)

    def trunk(
        self,
        keys: torch.Tensor,
        templates: torch.Tensor,
        feats: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The embeddings and the LSTM: its outputs (B, T, H) and final state."""
        h, state = self.lstm(self.inputs(keys, templates, feats), state)  # (B, T, H)
        return h, state

    def inputs(self, keys: torch.Tensor, templates: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The LSTM's input: the key and template embeddings and the projected features, (..., D)."""
        return torch.cat(
            [self.key_emb(keys), self.template_emb(templates), F.gelu(self.feature_proj(feats))], dim=-1
        )

    def step(
        self,
        x: torch.Tensor,  # (B, D) inputs (``inputs``)
        state: tuple[torch.Tensor, torch.Tensor],  # ((L, B, H), (L, B, H))
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The LSTM for one time step, in inference: a fused cell per layer, which at the small
        batches of a live step costs about half the whole LSTM's call (the same function, within
        float rounding). Returns the top layer's output (B, H) and the new state."""
        lstm = self.lstm
        hs, cs = [], []
        for layer in range(self.cfg.layers):
            h, c = torch.lstm_cell(
                x,
                (state[0][layer], state[1][layer]),
                getattr(lstm, f"weight_ih_l{layer}"),
                getattr(lstm, f"weight_hh_l{layer}"),
                getattr(lstm, f"bias_ih_l{layer}"),
                getattr(lstm, f"bias_hh_l{layer}"),
            )
            hs.append(h)
            cs.append(c)
            x = h
        return x, (torch.stack(hs), torch.stack(cs))

    def heads(self, h: torch.Tensor, succ: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every head's logits from the LSTM's outputs ``h`` (..., H); ``succ`` the successor
        candidates' features (..., S, SUCC_FEATURES)."""
        out = {
            "key_logits": self.key_head(h),  # (B, T, V)
            "template_logits": self.template_head(h),  # (B, T, K)
            "copy_logits": self.copy_head(h),  # (B, T, copy_slots + 1)
            "confidence": self.confidence_head(h).squeeze(-1),  # (B, T) logits
        }
        if self.cfg.successors and succ is not None:
            z = torch.tanh(
                self.succ_state(h).unsqueeze(2) + self.succ_feat(succ) + self.succ_slot.weight
            )  # (B, T, S, succ_dim)
            scores = self.succ_out(z).squeeze(-1).masked_fill(succ[..., 1] == 0, -1e4)  # (B, T, S)
            out["succ_logits"] = torch.cat([scores, self.succ_none(h)], -1)  # (B, T, S + 1)
        return out

    def forward(
        self,
        keys: torch.Tensor,  # (B, T) key tokens
        templates: torch.Tensor,  # (B, T) template tokens
        feats: torch.Tensor,  # (B, T, F)
        state: tuple[torch.Tensor, torch.Tensor] | None = None,  # ((L, B, H), (L, B, H))
        next_keys: torch.Tensor | None = None,  # (B, T) targets: the key token read next, PAD for none
        next_templates: torch.Tensor | None = None,  # (B, T)
        next_copy: torch.Tensor | None = None,  # (B, T) copy slot targets, -100 for none
        succ: torch.Tensor | None = None,  # (B, T, S, SUCC_FEATURES) successor candidates' features
        next_succ: torch.Tensor | None = None,  # (B, T) successor slot targets (S: none), -100 for none
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        h, state = self.trunk(keys, templates, feats, state)
        out = self.heads(h, succ)
        loss = None
        if next_keys is not None and next_templates is not None:
            # log_softmax once, for the loss and the confidence's target (cross_entropy would compute
            # it again, and a softmax for the target a third pass over B x T x V logits).
            key_logp = F.log_softmax(out["key_logits"].float(), -1)
            key_loss = F.nll_loss(key_logp.flatten(0, 1), next_keys.flatten(), ignore_index=0)
            tpl_logp = F.log_softmax(out["template_logits"].float(), -1)  # (the same, for the templates)
            template_loss = F.nll_loss(tpl_logp.flatten(0, 1), next_templates.flatten(), ignore_index=0)
            # The confidence's target (see confidence_target).
            with torch.no_grad():
                succ_p = None
                if "succ_logits" in out and next_succ is not None:
                    succ_p = torch.softmax(out["succ_logits"].float(), -1)
                copy_p = torch.softmax(out["copy_logits"].float(), -1) if next_copy is not None else None
                right = confidence_target(
                    key_logp, tpl_logp, copy_p, succ_p, next_keys, next_templates, next_copy, next_succ
                ).float()
            mask = (next_keys != 0).float()
            conf_loss = (
                F.binary_cross_entropy_with_logits(out["confidence"], right, reduction="none") * mask
            ).sum() / mask.sum().clamp(min=1)
            loss = key_loss + template_loss + 0.5 * conf_loss
            if next_copy is not None:
                loss = loss + F.cross_entropy(
                    out["copy_logits"].flatten(0, 1), next_copy.flatten(), ignore_index=-100
                )
            if "succ_logits" in out and next_succ is not None:
                loss = loss + F.cross_entropy(
                    out["succ_logits"].flatten(0, 1).float(), next_succ.flatten(), ignore_index=-100
                )
        return out, state, loss

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch of windows, as ``ml.training.data.windows`` lays them out
        (its keys; ``succ``/``next_succ`` only with the successor head)."""
        _, _, loss = self(
            batch["keys"],
            batch["templates"],
            batch["feats"],
            None,
            batch["next_keys"],
            batch["next_templates"],
            batch["next_copy"],  # (the copy head went untrained before this was passed)
            succ=batch.get("succ"),
            next_succ=batch.get("next_succ"),
        )
        assert loss is not None
        return loss  # type: ignore[no-any-return]


def confidence_target(
    key_logp: torch.Tensor,  # (B, T, V) log-probabilities of the key head
    tpl_logp: torch.Tensor,  # (B, T, K) of the template head
    copy_p: torch.Tensor | None,  # (B, T, copy_slots + 1) probabilities of the copy head (last: none)
    succ_p: torch.Tensor | None,  # (B, T, S + 1) of the successor head (last: none)
    next_keys: torch.Tensor,  # (B, T) targets, as ``forward`` takes them
    next_templates: torch.Tensor,
    next_copy: torch.Tensor | None,
    next_succ: torch.Tensor | None,
) -> torch.Tensor:
    """Whether the surest of the three ways of naming the next key is right, as compose ranks them:
    the key head's top known key, the successor head's top candidate, and the top template filled
    with the numbers of the copy head's top read (scored p(template) x p(copy)). PAD and UNK are not
    guesses: compose cannot name a key from them, so they neither win nor count. (Before, a key head
    sure of UNK, 0.97 at a game player's own state outside the vocabulary, outbid the template and
    copy guess, 0.91 and right 97% of the time, and the head was taught that it was wrong there.)"""
    best_p, key_top = _top_known(key_logp)
    right = key_top == next_keys  # (B, T)
    if succ_p is not None and next_succ is not None:
        s_p, s_top = succ_p[..., :-1].max(-1)
        right = torch.where(s_p > best_p, s_top == next_succ, right)
        best_p = torch.maximum(best_p, s_p)
    if copy_p is not None and next_copy is not None:
        tpl_p, tpl_top = _top_known(tpl_logp)
        c_p, c_top = copy_p[..., :-1].max(-1)
        filled = (tpl_top == next_templates) & (c_top == next_copy)
        right = torch.where(tpl_p * c_p > best_p, filled, right)
    return right


def _top_known(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probability and token of the likeliest token past PAD and UNK (0 and 1); probability 0
    and token -1 where the vocabulary holds none."""
    if logp.shape[-1] <= 2:
        return logp.new_zeros(logp.shape[:-1]), torch.full(logp.shape[:-1], -1, device=logp.device)
    lp, top = logp[..., 2:].max(-1)
    return lp.exp(), top + 2
