"""The notebooks in ``notebooks/`` run top to bottom at a small size, so they never rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SMALL_SIZE = {"quickstart.ipynb": 300, "multiclass.ipynb": 800}


@pytest.mark.parametrize("name", sorted(SMALL_SIZE))
def test_notebook_runs_at_a_small_size(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "code" and first.source.startswith("SIZE = "), "the first cell must set SIZE"
    first.source = f"SIZE = {SMALL_SIZE[name]}"
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    assert any(output.get("data", {}).get("image/png") for cell in notebook.cells for output in cell.get("outputs", []))
