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
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.inference.arm import MLPredictor

# Candidates the model names per read, as the simulator's arm asks of predict_streams: the gate
# merges them with the fallback's and the engine takes the best few under its budget.
MODEL_CANDIDATES = 10


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
    ) -> None:
        import torch

        from ml.inference.stepper import OnlineStepper
        from ml.registry import load_model, resolve

        self.reasons = {"model_load": 0, "model_error": 0}
        self.load_error = ""
        self.stepper: Any = None
        self.device = device
        self.version = ""  # which model: its directory's name (a registry's version) and weights' hash
        manifest: dict[str, Any] = {}
        if threads > 0:
            torch.set_num_threads(threads)  # (the engine's own process: the proxy and Redis share the cores)
        try:
            self.device = resolve_device(device)
            model, vocab, manifest = load_model(model_dir, self.device)
            self.stepper = OnlineStepper(model, vocab, self.device, max_clients)
            sha = str(manifest.get("weights_sha256", ""))[:12]
            self.version = f"{resolve(model_dir).name}@{sha}" if sha else resolve(model_dir).name
        except Exception as exc:  # a model error, a device error: the arm is its fallback alone
            self.reasons["model_load"] += 1
            self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self._setup([], np.zeros(0, np.float32), manifest, fallback, min_confidence, policy, min_score)
        self.model_reads = 0  # reads the model stepped over
        self.model_errors = 0  # batches whose step raised

    def prepare(self, reads: Sequence[tuple[int, str, float, bool]]) -> None:
        """The batch the engine is about to observe, in order: (client, key, time, fresh). The model
        steps over the fresh reads (a stale read's prefetches would come too late: it is shed, and
        only the fallback sees it); every read gets an entry, empty when the model has none."""
        n = len(reads)
        self.i = -1
        self.cands = [[]] * n  # (never mutated: predict reads them)
        self.conf = np.zeros(n, np.float32)
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
        if len(fresh) == n:
            self.cands, self.conf = cands, conf
            return
        for got, j in enumerate(fresh):
            self.cands[j] = cands[got]
        self.conf[fresh] = conf

    def figures(self) -> dict[str, Any]:
        """What the engine reports of this arm beside its own counts."""
        out: dict[str, Any] = {
            "model": "loaded" if self.stepper is not None else "failed",
            "model_version": self.version,
            "device": self.device,
            "fallback": self.fallback_spec,
            "model_reads": self.model_reads,
            "model_first": self.model_first,
            "fallbacks": dict(self.reasons),
        }
        if self.load_error:
            out["load_error"] = self.load_error
        return out
