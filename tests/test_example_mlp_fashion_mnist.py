"""The interim demo job on a small slice: it reports all three methods and reuses its cached base."""
from __future__ import annotations

import io
import os

import pytest

from peftc.data.fashion_mnist import DEFAULT_ROOT

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(DEFAULT_ROOT, "t10k-images-idx3-ubyte.gz")),
                                reason="Debian package dataset-fashion-mnist not installed")


def test_demo_reports_methods_and_reuses_the_cached_base(tmp_path, monkeypatch):
    from peftc.examples.mlp_fashion_mnist import DemoSettings, run

    monkeypatch.setenv("PEFTC_CACHE", str(tmp_path))
    settings = DemoSettings(hidden=(32,), base_epochs=2, adapt_epochs=3, train_limit=3000, batch_size=64)
    first_out, second_out = io.StringIO(), io.StringIO()
    first = run(settings, progress=False, out=first_out)
    second = run(settings, progress=False, out=second_out)
    assert "trained and cached" in first_out.getvalue() and "loaded from cache" in second_out.getvalue()
    assert os.listdir(tmp_path / "demo") and all(f.endswith(".npz") for f in os.listdir(tmp_path / "demo"))
    assert first["methods"] == {k: {**v, "seconds": first["methods"][k]["seconds"]}
                                for k, v in second["methods"].items()}
    methods = first["methods"]
    assert methods["probe"]["trainable_params"] == 33 * 10
    assert methods["lora"]["trainable_params"] == 33 * 10 + 8 * (784 + 32)
    for m in methods.values():
        assert 0.25 < m["accuracy"] <= 1.0  # well above the 0.1 of chance even on this small slice
    assert "linear probe" in first_out.getvalue() and "LoRA" in first_out.getvalue()
