"""notebooks/passuntil_scaling.ipynb runs top to bottom (on the committed results, or on the tiny family it
trains itself) and draws its four panels."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_passuntil_notebook_runs_and_draws_the_scaling_panels(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    monkeypatch.chdir(ROOT)
    nb = json.loads((ROOT / "notebooks" / "passuntil_scaling.ipynb").read_text())
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "passuntil_scaling.ipynb", "exec"), namespace)  # noqa: S102
    fig = namespace["fig"]
    assert len(fig.axes) == 4
    assert all(ax.lines for ax in fig.axes)
    assert 0.0 <= namespace["payload"]["coverage95"] <= 1.0
    matplotlib.pyplot.close(fig)
