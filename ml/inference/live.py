"""The model as an arm of the live prediction engine (``prefetch.engine``), built by the ``ml:``
loader in the engine's process.

The engine hands each batch of mirrored reads to ``prepare`` before it observes them one by one:
the batched stepper (``OnlineStepper.run``) steps every client's LSTM state over the batch's fresh
reads and gives each its candidates and confidence; ``observe`` and ``predict`` then serve them read
by read behind the same confidence gate and fallback heuristic as the simulator's arm
(``MLPredictor``), so an arm behaves live as it does in ``predis sim``.

Nothing the model does can stop the arm: a model that cannot be loaded (missing, corrupt, the device
gone) leaves the arm its fallback heuristic alone; a batch whose step raises is served by the
fallback alone. Each is counted by reason (``fallbacks``), and the engine reports them per arm.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.inference.arm import MLPredictor

# Candidates the model names per read, as the simulator's arm asks of predict_streams: the gate
# merges them with the fallback's and the engine takes the best few under its budget.
MODEL_CANDIDATES = 10


RECALL_K, RECALL_WINDOW = 10, 10  # live recall@10 within 10 reads, as training's metric


def _trained_recall(manifest: dict[str, Any]) -> float | None:
    value = (manifest.get("metrics") or {}).get("model", {}).get(f"recall@{RECALL_K}_within_{RECALL_WINDOW}")
    return round(float(value), 4) if value is not None else None


def resolve_device(device: str) -> str:
    """``auto``: CUDA where torch sees a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class LiveMLPredictor(MLPredictor):
    """``MLPredictor`` fed batch by batch instead of from a whole trace."""

    # The model names keys by their shape (a template filled with a recent read's numbers): the
    # engine may teach the proxy the template rules it follows (prefetch.engine, "rules").
    template_hints = True

    def __init__(
        self,
        model_dir: str,
        fallback: str = "",
        min_confidence: float | None = None,
        device: str = "auto",
        policy: str = "",
        min_score: float | None = None,
        max_clients: int = 16_384,
        threads: int = 1,
        check_every: float = 2.0,
        warm_reads: int = 4_096,
    ) -> None:
        """``model_dir``: a model, or a registry whose current version is followed: every
        ``check_every`` seconds the arm looks at the registry's ``current`` file and, when it names
        another version, loads it in a thread, warms its clients' states on the latest
        ``warm_reads`` reads, and swaps it in between two batches; the old model serves until then."""
        import torch

        from ml.registry import ModelError, resolve

        self.reasons = {"model_load": 0, "model_error": 0}
        self.load_error = ""
        self.stepper: Any = None
        self.device = device
        self.max_clients = max_clients
        self.model_dir = model_dir
        self.version = ""  # which model: its directory's name (a registry's version) and weights' hash
        self.path = ""  # the model directory loaded
        self.loaded_at = ""
        self.swaps = 0
        self.swap_errors = 0
        self.check_every = check_every
        self.next_check = time.monotonic() + check_every
        self.recent: deque[tuple[int, str, float]] = deque(maxlen=warm_reads)
        self.swapping: threading.Thread | None = None
        self.ready_swap: tuple[Any, dict[str, Any], str, str] | None = None
        self.capacity = 0.0
        self.fixed_params = {"fallback": fallback, "policy": policy}
        self.named: dict[int, deque[set[str]]] = {}  # client -> the model's top 10 after its latest reads
        self.recall_reads = self.recalled = 0
        self.trained_recall: float | None = None
        manifest: dict[str, Any] = {}
        if threads > 0:
            torch.set_num_threads(threads)  # (the engine's own process: the proxy and Redis share the cores)
        try:
            self.device = resolve_device(device)
            self.stepper, manifest, self.path, self.version = self._load(resolve(model_dir))
        except (ModelError, Exception) as exc:  # a model error, a device error: the arm is its fallback alone
            self.reasons["model_load"] += 1
            self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self._setup([], np.zeros(0, np.float32), manifest, fallback, min_confidence, policy, min_score)
        self.trained_recall = _trained_recall(manifest)
        self.model_reads = 0  # reads the model stepped over
        self.model_errors = 0  # batches whose step raised

    def _load(self, path: Path) -> tuple[Any, dict[str, Any], str, str]:
        from ml.inference.stepper import OnlineStepper
        from ml.registry import load_model

        model, vocab, manifest = load_model(path, self.device)
        stepper = OnlineStepper(model, vocab, self.device, self.max_clients)
        sha = str(manifest.get("weights_sha256", ""))[:12]
        self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return stepper, manifest, str(path), f"{path.name}@{sha}" if sha else path.name

    def choose(self, capacity: float) -> None:
        self.capacity = capacity  # (a swapped-in model takes its own choices at the same size)
        super().choose(capacity)

    def _check(self) -> None:
        """Start loading the registry's current version if it changed (in a thread)."""
        from ml.registry import ModelError, resolve

        self.next_check = time.monotonic() + self.check_every
        if self.swapping is not None or self.ready_swap is not None:
            return
        try:
            path = resolve(self.model_dir)
        except ModelError:
            return  # (a registry being written, or gone: keep the model in hand)
        if str(path) == self.path:
            return
        warm = list(self.recent)

        def load() -> None:
            try:
                stepper, manifest, where, version = self._load(path)
                for at in range(0, len(warm), 256):  # (its clients' states, on the latest reads)
                    stepper.run(warm[at : at + 256], 1)
                self.ready_swap = (stepper, manifest, where, version)
            except Exception as exc:
                self.swap_errors += 1
                self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.path = str(path)  # (not tried again until current names another version)
            finally:
                self.swapping = None

        self.swapping = threading.Thread(target=load, name="model-swap", daemon=True)
        self.swapping.start()

    def _swap(self) -> None:
        assert self.ready_swap is not None
        stepper, manifest, where, version = self.ready_swap
        self.ready_swap = None
        fixed_gate, fixed_floor, confidence, floor = (
            self.fixed_gate,
            self.fixed_floor,
            self.min_confidence,
            self.min_score,
        )
        self.stepper, self.manifest, self.path, self.version = stepper, manifest, where, version
        self.trained_recall = _trained_recall(manifest)
        self.named, self.recall_reads, self.recalled = {}, 0, 0  # (the new model's own recall)
        # The new model's own fallback (kept, with its state, when it is the same), policy, gate
        # and floor at this cache size, unless the arm's spec fixed them.
        if fixed_gate:
            self.min_confidence = confidence
        elif not manifest.get("gate_by_capacity"):
            self.min_confidence = 0.5
        if fixed_floor:
            self.min_score = floor
        if self.capacity:
            self.choose(self.capacity)
        self.swaps += 1

    def prepare(self, reads: Sequence[tuple[int, str, float, bool]]) -> None:
        """The batch the engine is about to observe, in order: (client, key, time, fresh). The model
        steps over the fresh reads (a stale read's prefetches would come too late: it is shed, and
        only the fallback sees it); every read gets an entry, empty when the model has none."""
        n = len(reads)
        self.i = -1
        self.cands = [[]] * n  # (never mutated: predict reads them)
        self.conf = np.zeros(n, np.float32)
        if self.ready_swap is not None:
            self._swap()
        self.recent.extend(read[:3] for read in reads)
        if time.monotonic() >= self.next_check:
            self._check()
        if self.stepper is None or self.min_confidence == math.inf:
            return
        fresh = [j for j, read in enumerate(reads) if read[3]]
        if not fresh:
            return
        try:
            cands, conf = self.stepper.run([reads[j][:3] for j in fresh], MODEL_CANDIDATES)
        except Exception:  # the batch is served by the fallback alone
            self.model_errors += 1
            self.reasons["model_error"] += len(fresh)
            return
        self.model_reads += len(fresh)
        self._recall([reads[j] for j in fresh], cands)
        if len(fresh) == n:
            self.cands, self.conf = cands, conf
            return
        for got, j in enumerate(fresh):
            self.cands[j] = cands[got]
        self.conf[fresh] = conf

    def tick(self) -> bool:
        """Between batches, reads or none (the engine calls it every fraction of a second): swap in
        a model that finished loading, look at the registry when due. True when a model was
        swapped in (the engine reports it then)."""
        swapped = False
        if self.ready_swap is not None:
            self._swap()
            swapped = True
        if time.monotonic() >= self.next_check:
            self._check()
        return swapped

    def _recall(
        self, reads: Sequence[tuple[int, str, float, bool]], cands: list[list[tuple[str, float]]]
    ) -> None:
        """Live recall@10 within 10 reads, as training measured it (ml.training.evaluate): a read
        counts as recalled when its key was among the model's top 10 after one of its client's 10
        previous reads."""
        named = self.named
        for (client, key, _, _), got in zip(reads, cands, strict=True):
            recent = named.get(client)
            if recent is None:
                if len(named) >= self.max_clients:
                    named.clear()
                recent = named[client] = deque(maxlen=RECALL_WINDOW)
            self.recall_reads += 1
            if any(key in s for s in recent):
                self.recalled += 1
            recent.append({k for k, _ in got[:RECALL_K]})

    def figures(self) -> dict[str, Any]:
        """What the engine reports of this arm beside its own counts."""
        out: dict[str, Any] = {
            "model": "loaded" if self.stepper is not None else "failed",
            "model_version": self.version,
            # Recall@10 within 10 reads: live (since this model was loaded) and at training.
            "live_recall": round(self.recalled / self.recall_reads, 4) if self.recall_reads else None,
            "trained_recall": self.trained_recall,
            "loaded_at": self.loaded_at,
            "swaps": self.swaps,
            "swap_errors": self.swap_errors,
            "device": self.device,
            "fallback": self.fallback_spec,
            "model_reads": self.model_reads,
            "model_first": self.model_first,
            "fallbacks": dict(self.reasons),
        }
        # Its training's figures and, for a version predis retrain promoted, its gate's.
        trained = (self.manifest.get("metrics") or {}).get("model", {})
        if trained.get("top1") is not None:
            out["trained_top1"] = round(float(trained["top1"]), 4)
        gate = self.manifest.get("gate") or {}
        for key in ("candidate_hit_ratio", "current_hit_ratio", "held_out_reads"):
            if gate.get(key) is not None:
                out[f"gate_{key}"] = gate[key]
        if gate.get("time"):
            out["gate_time"] = str(gate["time"])
        if self.load_error:
            out["load_error"] = self.load_error
        return out
