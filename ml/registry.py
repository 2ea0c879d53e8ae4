"""Model persistence and versions: safetensors weights, a JSON manifest, a registry directory.

A model directory holds ``model.safetensors`` (weights only: no pickle anywhere) and
``manifest.json`` (format version, config, vocabulary, training-data fingerprint, metrics, created
time, library versions, and the SHA-256 of the weights). A registry is a directory of numbered
versions ``v0001``, ``v0002``... with a ``current`` file naming the one in use. Loading a missing,
corrupt, truncated or mismatched model raises :class:`ModelError` with one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from common.errors import PredisError

FORMAT = "predis-lstm/1"
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


class ModelError(PredisError):
    """A model directory is missing, corrupt, truncated or does not match this code."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model: Any, vocab: Any, out_dir: str | os.PathLike[str], **manifest: Any) -> Path:
    """Write weights and manifest into ``out_dir`` (created if needed)."""
    import numpy
    import safetensors
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    doc = {
        "format": FORMAT,
        "config": model.cfg.to_json(),
        "vocabulary": vocab.to_json(),
        "weights_sha256": _sha256(out / WEIGHTS),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "safetensors": safetensors.__version__,
        },
        **manifest,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(out / MANIFEST)
    return out


def check_model(model_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(the model's directory, its manifest) once the manifest reads, names this format and the
    weights match its checksum; without torch (the proxy checks a model spec with it and leaves
    loading to the prediction engine's process)."""
    path = resolve(model_dir)
    try:
        doc = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: no {MANIFEST}: not a Predis model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}/{MANIFEST} is corrupt: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ModelError(f"{path}: model format {found!r}, this Predis reads {FORMAT!r}")
    weights = path / WEIGHTS
    if not weights.exists():
        raise ModelError(f"{path}: {WEIGHTS} is missing")
    if _sha256(weights) != doc.get("weights_sha256"):
        raise ModelError(f"{weights} does not match its manifest (truncated or replaced)")
    return path, doc


def load_model(model_dir: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, vocabulary, manifest) from a model directory or a registry."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ml.models.lstm.model import LSTMConfig, NextKeyLSTM
    from ml.vocab import Vocabulary

    path, doc = check_model(model_dir)
    weights = path / WEIGHTS
    try:
        # (Models saved before replay slots existed had none; the dataclass default is for new ones.)
        cfg = LSTMConfig(**{"replay_slots": 0, **doc["config"]})
        vocab = Vocabulary.from_json(doc["vocabulary"])
    except (TypeError, KeyError) as exc:
        raise ModelError(f"{path}/{MANIFEST} does not describe a model this code can build: {exc}") from None
    if vocab.key_size != cfg.key_vocab or vocab.template_size != cfg.template_vocab:
        raise ModelError(
            f"{path}: the vocabulary ({vocab.key_size} keys, {vocab.template_size} templates) does not match the config"
        )
    try:
        model = NextKeyLSTM(cfg)
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:  # (layers: 0, a size of -1...)
        raise ModelError(f"{path}/{MANIFEST}: its config cannot build a model: {exc}") from None
    try:
        state = load_file(str(weights), device=device)
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ModelError(f"{weights}: cannot load the weights: {str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    return model, vocab, doc


# --- registry -------------------------------------------------------------------------------------

_VERSION = re.compile(r"^v(\d{4,})$")


def versions(registry: str | os.PathLike[str]) -> list[Path]:
    root = Path(registry)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=lambda p: int(p.name[1:]))


def next_version(registry: str | os.PathLike[str]) -> Path:
    existing = versions(registry)
    n = int(existing[-1].name[1:]) + 1 if existing else 1
    return Path(registry) / f"v{n:04d}"


def set_current(registry: str | os.PathLike[str], version: Path) -> None:
    root = Path(registry)
    tmp = root / "current.tmp"
    tmp.write_text(version.name + "\n")
    tmp.replace(root / "current")


def resolve(path: str | os.PathLike[str]) -> Path:
    """A model directory itself, or the current version of a registry."""
    p = Path(path)
    if (p / MANIFEST).exists() or (p / WEIGHTS).exists():
        return p
    current = p / "current"
    if current.exists():
        name = current.read_text().strip()
        target = p / name
        if not _VERSION.match(name) or not target.is_dir():
            raise ModelError(f"{current} names {name!r}, which is not a version in {p}")
        return target
    if not p.exists():
        raise ModelError(f"{p}: no such model directory")
    raise ModelError(f"{p}: neither a model directory nor a registry with a 'current' version")


def rollback(registry: str | os.PathLike[str], to: str | None = None) -> tuple[str | None, str]:
    """Make ``to`` (default: the version before the current one) the registry's current version;
    returns (the version it was, the version it is)."""
    found = versions(registry)
    if not found:
        raise ModelError(f"{registry}: no model versions")
    try:
        current: Path | None = resolve(registry)
    except ModelError:
        current = None
    if to:
        target = Path(registry) / to
        if target not in found:
            raise ModelError(f"{registry}: no version {to!r}")
    else:
        if current is None or current not in found or found.index(current) == 0:
            raise ModelError(f"{registry}: no version before the current one to roll back to")
        target = found[found.index(current) - 1]
    set_current(registry, target)
    with open(Path(registry) / "decisions.jsonl", "a") as fh:
        fh.write(
            json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "rollback": True,
                    "from": current.name if current is not None else None,
                    "version": target.name,
                },
                sort_keys=True,
            )
            + "\n"
        )
    return (current.name if current is not None else None), target.name
