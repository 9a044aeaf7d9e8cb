"""notebooks/datafree_kd.ipynb runs top to bottom (tiny teacher) under the test command."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from peftc.data import fashion_mnist as fm

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not os.path.isfile(os.path.join(fm.DEFAULT_ROOT, "t10k-images-idx3-ubyte.gz")),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_datafree_kd_notebook_runs(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(ROOT / "notebooks" / "datafree_kd.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "teacher test accuracy" in outputs
