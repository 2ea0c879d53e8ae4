"""The notebooks run top to bottom: each is executed by a Jupyter kernel of this venv (nbclient),
on small data, and every code cell must finish without an error. The A/B notebook starts its own
Redis and proxy processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_top_to_bottom(name: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("PREDIS_NOTEBOOK_READS", "6000")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("PREDIS_RUN_DIR", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # (raises CellExecutionError, with the cell and its traceback, on an error)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []


def test_notebooks_are_committed_without_outputs() -> None:
    """(Their outputs come from running them; a committed output would be a figure without a run.)"""
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
