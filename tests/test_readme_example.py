"""The README's Python example runs as written (in a temporary folder)."""
from __future__ import annotations

import os
import re


def test_readme_python_example_runs(tmp_path, monkeypatch):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert namespace["loss"] > 0
