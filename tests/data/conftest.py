"""Fixtures for the data layer: where the shared real traces are, when this machine has them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def traces_dir() -> Path | None:
    for candidate in (os.environ.get("PREDIS_TRACES"), ROOT.parent / "shared" / "traces"):
        if candidate and Path(candidate, "multi1.trace.gz").exists():
            return Path(candidate)
    return None


@pytest.fixture
def traces() -> Path:
    found = traces_dir()
    if found is None:
        pytest.skip(
            "the shared traces are not on this machine (set PREDIS_TRACES); the format tests use samples"
        )
    return found
