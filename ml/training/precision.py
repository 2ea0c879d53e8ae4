"""Which precision training runs in: bf16 autocast where the model's ops run in it, else fp32.

Whether bf16 works is decided by running the model, not by reading CPU flags: oneDNN's LSTM has no
bf16 kernel on CPUs without AVX-512 (an AMD EPYC of the Zen 2/3 kind, say), where autocast fails
with "could not create a primitive descriptor for the LSTM forward propagation primitive", and a
flag list cannot say what a given torch build does with the ISA it finds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ml.models.lstm.model import LSTMConfig, NextKeyLSTM
from ml.training.data import SUCC_FEATURES

PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def bf16_failure(device: str) -> str | None:
    """Why the model cannot train under bf16 autocast on ``device`` (None: it can): one forward
    and backward step of a tiny ``NextKeyLSTM`` (every head, the successor head included) on a
    4-read window, the ops a training step uses. A few milliseconds, once per device."""
    cfg = LSTMConfig(
        key_vocab=8, template_vocab=4, key_dim=4, template_dim=2, feature_dim=2, hidden=4, succ_dim=4
    )
    gen = torch.Generator().manual_seed(0)
    try:
        model = NextKeyLSTM(cfg).to(device)
        b, t, s = 2, 4, cfg.successors
        batch = {
            "keys": torch.randint(1, cfg.key_vocab, (b, t), generator=gen),
            "templates": torch.randint(1, cfg.template_vocab, (b, t), generator=gen),
            "feats": torch.rand(b, t, cfg.n_features, generator=gen),
            "next_keys": torch.randint(1, cfg.key_vocab, (b, t), generator=gen),
            "next_templates": torch.randint(1, cfg.template_vocab, (b, t), generator=gen),
            "next_copy": torch.randint(0, cfg.copy_slots + 1, (b, t), generator=gen),
            "succ": torch.rand(b, t, s, SUCC_FEATURES, generator=gen),
            "next_succ": torch.randint(0, s + 1, (b, t), generator=gen),
        }
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            loss = model.batch_loss(batch)
        loss.backward()
        if not torch.isfinite(loss).item():
            return "the loss of a bf16 step is not finite"
    except RuntimeError as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 in hardware (avx512_bf16 or AMX): there, bf16 autocast
    takes a fifth off a training step of the reference model (bench/HISTORY.md); elsewhere, where
    it runs at all, it is emulated and slower than fp32. A speed hint for ``auto`` only: whether
    bf16 runs at all is ``bf16_failure``'s question."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def use_bf16(precision: str, device: str, probe: Callable[[str], str | None] = bf16_failure) -> bool:
    """Whether to train under bf16 autocast. ``bf16`` where the model cannot run in it is one
    clear error, before any training; ``auto`` is bf16 on a GPU and on a CPU with native bf16,
    wherever the model runs in it, and fp32 otherwise."""
    from common.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return False
    wanted = precision == "bf16" or device.startswith("cuda") or native_bf16_cpu()
    if not wanted:
        return False
    failure = probe(device)
    if failure is None:
        return True
    if precision == "bf16":
        raise ConfigError(
            f"--precision bf16: the model does not run in bf16 on {device} here ({failure}); "
            "use --precision fp32 or auto"
        )
    return False
