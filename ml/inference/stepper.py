"""The model one read at a time, as the live prediction engine will run it (``OnlineStepper``),
and the allocator setting that process makes at its start (``keep_freed_memory``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ml.inference.compose import TOP_KEYS, TOP_TEMPLATES, BatchComposer, compose, top_probs
from ml.training.data import RECENT, SUCC_FEATURES, SuccessorCandidates, replay_slots_of
from ml.vocab import Vocabulary

# glibc returns freed memory above M_TRIM_THRESHOLD to the system and serves blocks above
# M_MMAP_THRESHOLD with fresh mappings; its defaults (dynamic, a few MB) fall right at the size of one
# step's logits and softmax (2 MB each at batch 64 and 8,192 keys), so every step faulted in about
# 1,000 fresh pages, about 15% of the step (bench/HISTORY.md). Kept high, freed blocks are reused.
TRIM_THRESHOLD = 256 << 20
MMAP_THRESHOLD = 64 << 20


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (process-wide, as the MALLOC_TRIM_THRESHOLD_
    and MALLOC_MMAP_THRESHOLD_ environment variables would); False where the C library is not glibc.
    Called once by the process that runs the stepper, at its start (bench.mlbench; the live
    engine's process), never by a constructor: it changes the whole process."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_trim_threshold, TRIM_THRESHOLD)) and bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD))


class OnlineStepper:
    """The model one read at a time, as the proxy will run it: each read advances its client's
    LSTM state by one step (nothing is re-run), reads of different clients are stepped together in
    one batch, and each gets its top-k next keys. Client states are kept for ``max_clients`` clients
    (least recently active dropped), as rows of one pool tensor on the model's device: a step
    gathers its clients' rows and scatters the new states back, two indexed copies instead of a
    tensor per client."""

    def __init__(
        self, model: Any, vocab: Vocabulary, device: str = "cpu", max_clients: int = 100_000
    ) -> None:
        from collections import OrderedDict

        from ml.features.realtime import RealtimeFeatures

        self.model, self.vocab, self.device = model, vocab, device
        self.features = RealtimeFeatures(pairs=False)  # (the model reads no co-occurrence counts)
        slots = int(getattr(model.cfg, "successors", 0))
        self.successors = SuccessorCandidates(slots, replay=replay_slots_of(model.cfg)) if slots else None
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # client -> its row in the pool
        self.recent: dict[int, deque[str]] = {}
        self.max_clients = max_clients
        self.layers, self.hidden = model.cfg.layers, model.cfg.hidden
        self.pool = torch.zeros(2, self.layers, 0, self.hidden, device=device)  # (h|c, L, rows, H)
        self.composer = BatchComposer(vocab)

    def _slots(self, reads: Sequence[tuple[int, str, float]]) -> torch.Tensor:
        """Pool rows for the reads' clients: a new client gets a zeroed row (the least recently
        active client's once ``max_clients`` are kept)."""
        slot_of = self.slot_of
        if len(reads) > self.max_clients:
            raise ValueError(f"a step of {len(reads)} reads needs max_clients >= {len(reads)}")
        rows, fresh = [], []
        for client, _, _ in reads:
            row = slot_of.get(client)
            if row is None:
                if len(slot_of) >= self.max_clients:
                    old, row = slot_of.popitem(last=False)
                    self.recent.pop(old, None)
                else:
                    row = len(slot_of)
                    if row >= self.pool.shape[2]:  # grow by doubling, up to max_clients rows
                        size = min(self.max_clients, max(64, 2 * self.pool.shape[2]))
                        grown = torch.zeros(2, self.layers, size, self.hidden, device=self.device)
                        grown[:, :, : self.pool.shape[2]] = self.pool
                        self.pool = grown
                slot_of[client] = row
                fresh.append(row)
            else:
                slot_of.move_to_end(client)
            rows.append(row)
        index = torch.tensor(rows, device=self.device)
        if fresh:
            self.pool[:, :, fresh] = 0.0
        return index

    @torch.no_grad()
    def run(
        self, reads: Sequence[tuple[int, str, float]], k: int = 10
    ) -> tuple[list[list[tuple[str, float]]], np.ndarray]:
        """A batch of (client, key, t) reads in the order they came, a client's several reads
        included: each read's top-k and confidence, as many ``step`` calls of one read each would
        give them. The host work runs once over the batch in read order (tokens, feature rows,
        successor candidates); the LSTM runs in waves (the first read of every client in the batch,
        then the second...), each wave one batched call; the heads and their top-k run once over
        the whole batch."""
        n = len(reads)
        if not n:
            return [], np.zeros(0, np.float32)
        vocab, device, model = self.vocab, self.device, self.model
        key_token, template_token = vocab.key_token, vocab.template_token
        keys = torch.tensor([key_token(key) for _, key, _ in reads], device=device)
        tpls = torch.tensor([template_token(key) for _, key, _ in reads], device=device)
        values = self.features.values
        feats = torch.as_tensor(np.array([values(key, t) for _, key, t in reads], np.float32), device=device)
        succ_keys: list[list[str]] = [[] for _ in reads]
        succ = None
        if self.successors is not None:
            after = self.successors.after
            found = [after(key, client) for client, key, _ in reads]
            succ_keys = [f[0] for f in found]
            flat = np.array([f[1] for f in found], np.float32)
            succ = torch.as_tensor(flat.reshape(n, 1, -1, SUCC_FEATURES), device=device)
        # Waves: wave w holds each client's w-th read of the batch, so a client's state advances in
        # the order of its reads and no wave holds a client twice.
        waves: list[list[int]] = []
        seen: dict[int, int] = {}
        for j, (client, _, _) in enumerate(reads):
            w = seen.get(client, 0)
            seen[client] = w + 1
            if w == len(waves):
                waves.append([])
            waves[w].append(j)
        if len(seen) > self.max_clients:
            raise ValueError(f"a batch of {len(seen)} clients needs max_clients >= {len(seen)}")
        x = model.inputs(keys, tpls, feats)
        if len(waves) == 1:
            index = self._slots(reads)
            state = self.pool.index_select(2, index)
            h, (hn, cn) = model.step(x, (state[0], state[1]))
            self.pool.index_copy_(2, index, torch.stack((hn, cn)))
        else:
            h = torch.empty(n, self.hidden, device=device)
            for wave in waves:
                at = torch.tensor(wave, device=device)
                index = self._slots([reads[j] for j in wave])
                state = self.pool.index_select(2, index)
                hw, (hn, cn) = model.step(x[at], (state[0], state[1]))
                self.pool.index_copy_(2, index, torch.stack((hn, cn)))
                h[at] = hw
        out = model.heads(h[:, None], succ)
        sp = torch.softmax(out["succ_logits"][:, 0].float(), -1).cpu().numpy() if succ is not None else None
        kp, ki = top_probs(out["key_logits"][:, 0], TOP_KEYS)
        copy = torch.softmax(out["copy_logits"][:, 0].float(), -1).cpu().numpy()
        tp, ti = top_probs(out["template_logits"][:, 0], TOP_TEMPLATES)
        conf = torch.sigmoid(out["confidence"][:, 0].float()).cpu().numpy()
        recents = self.recent
        latest = []
        for client, key, _ in reads:
            recent = recents.get(client)
            if recent is None:
                recent = recents[client] = deque(maxlen=RECENT)
            recent.append(key)
            latest.append(tuple(reversed(recent)))
        return self.composer(ki, kp, ti, tp, copy, latest, k, succ_keys, sp), conf

    def step(self, reads: Sequence[tuple[int, str, float]], k: int = 10) -> list[list[tuple[str, float]]]:
        """One step for a batch of (client, key, t) reads of distinct clients: each read's top-k."""
        return self.step_scored(reads, k)[0]

    @torch.no_grad()
    def step_scored(
        self, reads: Sequence[tuple[int, str, float]], k: int = 10
    ) -> tuple[list[list[tuple[str, float]]], np.ndarray]:
        """``step``, with the confidence head's probability that each read's top prediction is
        right (the gate the ML arm applies, as the simulator's ``predict_streams`` gives it)."""
        vocab = self.vocab
        n = len(reads)
        keys = torch.tensor([[vocab.key_token(key)] for _, key, _ in reads], device=self.device)
        tpls = torch.tensor([[vocab.template_token(key)] for _, key, _ in reads], device=self.device)
        values = self.features.values
        feats = torch.as_tensor(
            np.array([values(key, t) for _, key, t in reads], np.float32), device=self.device
        ).unsqueeze(1)
        succ_keys: list[list[str]] = [[] for _ in reads]
        succ = None
        if self.successors is not None:
            found = [self.successors.after(key, client) for client, key, _ in reads]
            succ_keys = [f[0] for f in found]
            flat = np.array([f[1] for f in found], np.float32)  # (n, slots * SUCC_FEATURES)
            succ = torch.as_tensor(flat.reshape(n, 1, -1, SUCC_FEATURES), device=self.device)
        index = self._slots(reads)
        state = self.pool.index_select(2, index)  # (2, L, n, H)
        out, (h, c), _ = self.model(keys, tpls, feats, (state[0], state[1]), succ=succ)
        self.pool.index_copy_(2, index, torch.stack((h, c)))
        return self._compose(reads, out, succ_keys, succ is not None, k)

    def _compose(
        self,
        reads: Sequence[tuple[int, str, float]],
        out: dict[str, torch.Tensor],
        succ_keys: list[list[str]],
        with_succ: bool,
        k: int,
    ) -> tuple[list[list[tuple[str, float]]], np.ndarray]:
        """The heads' outputs (one time step per read) as each read's top-k keys, and confidence."""
        vocab = self.vocab
        n = len(reads)
        sp = torch.softmax(out["succ_logits"][:, 0].float(), -1).cpu().numpy() if with_succ else None
        kp, ki = top_probs(out["key_logits"][:, 0], TOP_KEYS)
        copy = torch.softmax(out["copy_logits"][:, 0].float(), -1).cpu().numpy()
        tp, ti = top_probs(out["template_logits"][:, 0], TOP_TEMPLATES)
        conf = torch.sigmoid(out["confidence"][:, 0].float()).cpu().numpy()
        results = []
        ki_l, kp_l, ti_l, tp_l, copy_l = ki.tolist(), kp.tolist(), ti.tolist(), tp.tolist(), copy.tolist()
        sp_l = sp.tolist() if sp is not None else None
        recents = self.recent
        for j, (client, key, _) in enumerate(reads):
            recent = recents.get(client)
            if recent is None:
                recent = recents[client] = deque(maxlen=RECENT)
            recent.append(key)
            named = succ_keys[j]
            results.append(
                compose(
                    vocab,
                    ki_l[j],
                    kp_l[j],
                    ti_l[j],
                    tp_l[j],
                    recent,
                    k,
                    copy_l[j],
                    named,
                    sp_l[j][: len(named)] if sp_l is not None else [],
                )
            )
        assert len(results) == n
        return results, conf
