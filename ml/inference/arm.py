"""The model as the simulator's arm: every read's candidates computed up front in batches over the
trace's client streams (``predict_streams``), served one read at a time behind the confidence
gate and a fallback heuristic (``MLPredictor``).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.inference.candidates import Candidates
from ml.inference.compose import TOP_KEYS, TOP_TEMPLATES, BatchComposer, top_probs
from ml.training.data import RECENT, replay_slots_of, with_successors
from ml.vocab import Vocabulary

_SCORE = itemgetter(1)

# The ML arm's gate (``min_confidence``): at or above 0, the model's list first when its confidence
# reaches it; -1, both lists merged by score; DISCOUNT_GATE, merged with the fallback's scores
# multiplied by one minus the model's confidence.
MERGE_GATE = -1.0
DISCOUNT_GATE = -2.0


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
    into: Candidates | None = None,
) -> tuple[Candidates, np.ndarray, np.ndarray]:
    """For each read in ``idx`` (indices into ``enc``): the model's top-k next keys of its client
    (``Candidates``: empty for the reads not in ``idx``; ``into``'s rows of them, if given), its
    confidence, and the key code of its top prediction (the first of the composed list, whichever
    head named it; -1 for none the log holds); each client's stream runs once, state carried
    forward."""
    from ml.training.data import stream_order

    order, _ = stream_order(enc.client, idx)
    cands = Candidates(len(enc), k, enc.names) if into is None else into
    conf = np.zeros(len(enc), np.float32)
    top_code = np.full(len(enc), -1, np.int64)
    held = len(enc.names)  # (codes below it are the log's keys; Candidates adds others after them)
    slots = int(getattr(model.cfg, "successors", 0))
    enc = with_successors(enc, slots, replay_slots_of(model.cfg))
    # Cut every client's stream into chunks of `length`; chunk j of a stream continues from chunk
    # j-1's state, so chunks are processed in rounds: round j holds every stream's j-th chunk.
    clients = enc.client[order]
    starts = np.flatnonzero(np.r_[True, clients[1:] != clients[:-1]])
    ends = np.r_[starts[1:], order.size]
    streams = [order[s:e] for s, e in zip(starts, ends, strict=True)]
    states: dict[int, Any] = {}
    names, codes = enc.names, enc.codes
    composer = BatchComposer(vocab)
    rounds = max((len(s) + length - 1) // length for s in streams) if streams else 0
    budget = batch * length  # reads per forward pass, padding included
    for r in range(rounds):
        # Longest first, so that a group's chunks are about as long as each other: padded to the
        # longest, a group of one long and 63 short streams ran 16 times the reads it held (gaming).
        live = sorted(
            (i for i, s in enumerate(streams) if len(s) > r * length), key=lambda i: -len(streams[i])
        )
        groups, b = [], 0
        while b < len(live):
            width = min(length, len(streams[live[b]]) - r * length)
            size = max(1, budget // width)
            groups.append(live[b : b + size])
            b += size
        for group in groups:
            chunks = [streams[i][r * length : (r + 1) * length] for i in group]
            width = max(len(c) for c in chunks)
            rows = np.stack([np.r_[c, np.full(width - len(c), c[-1])] for c in chunks])
            keys = torch.as_tensor(enc.key_tok[rows], device=device)
            tpls = torch.as_tensor(enc.tpl_tok[rows], device=device)
            feats = torch.as_tensor(enc.feats[rows], device=device)
            succ = torch.as_tensor(enc.succ_feats[rows], device=device) if slots else None
            h0 = [states.get(i) for i in group]
            state = None
            if any(s is not None for s in h0):
                zeros = (torch.zeros(model.cfg.layers, model.cfg.hidden, device=device),) * 2
                hs = [s if s is not None else zeros for s in h0]
                state = (torch.stack([s[0] for s in hs], 1), torch.stack([s[1] for s in hs], 1))
            out, (h, c), _ = model(keys, tpls, feats, state, succ=succ)
            # Only a stream's last chunk can be shorter than the others, so a padded row's state is
            # never needed again.
            for j, i in enumerate(group):
                states[i] = (h[:, j].clone(), c[:, j].clone())
            kp, ki = top_probs(out["key_logits"], TOP_KEYS)
            copy = torch.softmax(out["copy_logits"].float(), -1).cpu().numpy()
            tp, ti = top_probs(out["template_logits"], TOP_TEMPLATES)
            cf = torch.sigmoid(out["confidence"].float()).cpu().numpy()
            sp = torch.softmax(out["succ_logits"].float(), -1).cpu().numpy() if slots else None
            # Every read of the group composed in one batch (BatchComposer: the same keys, scores
            # and order as ``compose`` read by read): its client's reads, latest first, for the
            # templates; its successor slots by name ("" for an empty one).
            at_j: list[int] = []
            at_t: list[int] = []
            reads: list[int] = []
            latest: list[tuple[str, ...]] = []
            for j, chunk in enumerate(chunks):
                stream = streams[group[j]]
                recent: deque[str] = deque(
                    (names[codes[prev]] for prev in stream[max(0, r * length - RECENT) : r * length]),
                    maxlen=RECENT,
                )
                for t, read in enumerate(chunk.tolist()):
                    recent.append(names[codes[read]])
                    latest.append(tuple(reversed(recent)))
                    at_j.append(j)
                    at_t.append(t)
                    reads.append(read)
            jj, tt = np.array(at_j), np.array(at_t)
            succ_keys: list[list[str]] = []
            succ_probs = None
            if sp is not None:
                succ_keys = [
                    [names[c] if c >= 0 else "" for c in row] for row in enc.succ_codes[reads].tolist()
                ]
                succ_probs = sp[jj, tt]
            composed = composer(
                ki[jj, tt], kp[jj, tt], ti[jj, tt], tp[jj, tt], copy[jj, tt], latest, k, succ_keys, succ_probs
            )
            cands.fill(reads, composed)
            conf[reads] = cf[jj, tt]
            # The top prediction the confidence is about: the composed list's first, from whichever
            # head named it (the key head, a successor, a filled template); its code in the table of
            # names is the log's own code where the log holds it.
            first = cands.codes[reads, 0]
            top_code[reads] = np.where(first < held, first, -1)
    return cands, conf, top_code


class MLPredictor:
    """The model as a simulator arm. Candidates for every read of the trace are computed up front in
    batches (the model's state depends only on the reads, not on the cache) and served one read at a
    time. The confidence head gates a fallback heuristic (by default the one training found best on
    its validation split, recorded in the manifest): at or above ``min_confidence`` the model's
    candidates come first and the fallback's fill the rest; below it, the other way round. Keys the
    vocabulary does not know reach the model as UNK and the fallback still sees them by name."""

    name = "ml"

    def __init__(
        self,
        model_dir: str,
        log: Any,
        fallback: str = "",
        min_confidence: float | None = None,
        device: str = "cpu",
        policy: str = "",
        min_score: float | None = None,
        finetune: int = 0,
        finetune_steps: int = 20,
        finetune_window: int = 0,
        finetune_lr: float = 1e-3,
    ) -> None:
        from common.errors import ConfigError
        from ml.registry import load_model
        from ml.training.data import encode

        finetune, finetune_steps, finetune_window = int(finetune), int(finetune_steps), int(finetune_window)
        if finetune < 0 or finetune_steps < 1 or finetune_window < 0 or not float(finetune_lr) > 0:
            raise ConfigError(
                "ml arm: finetune (reads between fine-tunings, 0: never) and finetune_window must be "
                "at least 0, finetune_steps at least 1 and finetune_lr above 0"
            )
        model, vocab, manifest = load_model(model_dir, device)
        self._setup([], np.zeros(0, np.float32), manifest, fallback, min_confidence, policy, min_score)
        # Learning while replaying (ml.inference.finetune): 0, the model as trained, frozen.
        tuning = (finetune, finetune_steps, finetune_window, float(finetune_lr)) if finetune else None

        def compute() -> tuple[Candidates, np.ndarray]:
            # Kept with the log (AccessLog.derived), so the arms of one trace share them and they
            # go when the log does; no module-level cache.
            key = (
                "ml-predictions",
                str(Path(model_dir).resolve()),
                str(manifest.get("weights_sha256")),
                device,
                tuning,
            )
            cached = log.derived.get(key)
            if cached is not None:
                cands, conf, self.finetuned = cached
                return cands, conf
            enc = encode(
                log,
                vocab,
                successors=int(getattr(model.cfg, "successors", 0)),
                replay=replay_slots_of(model.cfg),
            )
            if tuning is None:
                cands, conf, _ = predict_streams(model, vocab, enc, np.arange(len(enc)), device=device)
            else:
                from ml.inference.finetune import predict_finetuning

                every, steps, window, lr = tuning
                cands, conf, self.finetuned = predict_finetuning(
                    predict_streams,
                    model,
                    vocab,
                    enc,
                    every,
                    steps=steps,
                    window=window,
                    lr=lr,
                    device=device,
                )
            log.derived[key] = (cands, conf, self.finetuned)
            return cands, conf

        # Computed at the first prediction the gate lets through: an arm that training found to be
        # its fallback alone at this cache size never runs the model, and the arms of one trace at
        # several cache sizes share one pass.
        self._compute: Any = compute

    @classmethod
    def from_predictions(
        cls,
        cands: Sequence[list[tuple[str, float]]],
        conf: np.ndarray,
        fallback: str,
        min_confidence: float = 0.5,
        policy: str = "",
        min_score: float = 0.0,
    ) -> MLPredictor:
        """The arm from candidates already computed (training replays it on its own log)."""
        self = cls.__new__(cls)
        self._setup(cands, conf, {}, fallback, min_confidence, policy, min_score)
        return self

    def _setup(
        self,
        cands: Sequence[list[tuple[str, float]]],
        conf: np.ndarray,
        manifest: dict[str, Any],
        fallback: str,
        min_confidence: float | None,
        policy: str,
        min_score: float | None = None,
    ) -> None:
        from prefetch.predictors import make_predictor

        self.manifest = manifest
        self.cands, self.conf = cands, conf
        self.finetuned: dict[str, Any] | None = None  # the record of fine-tuning while replaying
        # The heuristic training found best on its validation split, unless one is named.
        self.fallback_spec = fallback or str(manifest.get("fallback", "markov"))
        self.fallback = make_predictor(self.fallback_spec)
        # The eviction policy training found best beside that fallback ("" for none recorded: the
        # simulator's own); the simulator runs this arm under it.
        self.policy = policy or str(manifest.get("policy", ""))
        self.fixed = bool(fallback or policy)  # named by the user: choose() leaves them alone
        # The gate: model first at or above this confidence; inf: the fallback alone (training found
        # the model made its replay worse at this cache size). None: from the manifest, else 0.5.
        self.fixed_gate = min_confidence is not None
        self.min_confidence = 0.5 if min_confidence is None else float(min_confidence)
        # The floor: candidates scored under it are not offered, so the prefetch budget a weak guess
        # would spend is kept for a surer one (the simulator's token bucket carries it). None: from
        # the manifest (chosen at training per cache size), else 0.
        self.fixed_floor = min_score is not None
        self.min_score = 0.0 if min_score is None else float(min_score)
        self.max_footprint = self.fallback.max_footprint + 1
        self.i = -1
        self.model_first = 0
        self._compute = None

    def choose(self, capacity: float) -> None:
        """Take the fallback, policy and gate training found best at the cache size (in entries)
        nearest ``capacity``, from the manifest (models without that record keep their one)."""
        from prefetch.predictors import make_predictor

        if capacity <= 0:
            return
        gates = self.manifest.get("gate_by_capacity")
        if gates and not self.fixed_gate:
            near = min(gates, key=lambda c: abs(np.log(float(c) / capacity)))
            self.min_confidence = math.inf if gates[near] == "off" else float(gates[near])
        floors = self.manifest.get("floor_by_capacity")
        if floors and not self.fixed_floor:
            near = min(floors, key=lambda c: abs(np.log(float(c) / capacity)))
            self.min_score = float(floors[near])
        by_size = self.manifest.get("fallback_by_capacity")
        if self.fixed or not by_size:
            return
        nearest = min(by_size, key=lambda c: abs(np.log(float(c) / capacity)))
        spec, _, policy = str(by_size[nearest]).partition("@")
        if spec != self.fallback_spec:
            self.fallback = make_predictor(spec)
            self.fallback_spec = spec
            self.max_footprint = self.fallback.max_footprint + 1
        self.policy = policy or self.policy

    def observe(self, key: str, t: float, hit: bool, client: int = 0) -> None:
        self.i += 1
        self.fallback.observe(key, t, hit, client)

    def predict(self, k: int) -> list[tuple[str, float]]:
        i = self.i
        theirs = self.fallback.predict(k)
        if self.min_confidence == math.inf:
            return theirs
        if self._compute is not None:
            self.cands, self.conf = self._compute()
            self._compute = None
        mine = self.cands[i] if 0 <= i < len(self.cands) else []
        if self.min_confidence < 0:  # merge the two lists by score (both estimate P(next key))
            merged: dict[str, float] = {}
            for key, score in mine:
                if score > merged.get(key, 0.0):
                    merged[key] = score
            # DISCOUNT_GATE: a fallback key is the next read only if the model's top is not, so
            # its score is discounted by the model's confidence in that top (a game client's last
            # entity: the model is sure its own state comes next, PG offers the entities after).
            weight = 1.0 - float(self.conf[i]) if mine and self.min_confidence <= DISCOUNT_GATE else 1.0
            for key, score in theirs:
                score *= weight
                if score > merged.get(key, 0.0):
                    merged[key] = score
            ranked = heapq.nlargest(k, merged.items(), key=_SCORE)
            return [kv for kv in ranked if kv[1] >= self.min_score] if self.min_score > 0 else ranked
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
            if ceiling < self.min_score:
                break
            out.append((key, ceiling))
            if len(out) >= k:
                break
        return out

    def footprint(self) -> int:
        return self.fallback.footprint() + 1
