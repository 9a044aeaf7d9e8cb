"""Which part of the code may import which, checked on the import statements themselves.

Every ``import`` / ``from ... import`` in a file counts, including those inside functions (a lazy
import is still a dependency), and so does the lazy target of a deprecated alias
(``moved(__name__, "peftc.new.module", ...)``) or of ``importlib.import_module("...")`` with a
literal name. The files are parsed with ``ast``, never imported. The rules:

* ``peftc.io`` holds generic file formats: it imports nothing of peftc outside itself.
* ``peftc.tuners`` uses only io's generic modules (safetensors, atomic writes); the PEFT key layout
  lives in tuners.
* ``peftc.models`` defines networks and runs no training (no train, optim, schedule, nor the
  methods built on models).
* ``peftc.data`` loads data and imports no model, method or training code.
* Nothing in peftc imports ``peftc.demo`` (it only runs the job), ``peftc.testing``, torch, the
  test suite or the benchmarks; ``import peftc`` and its public modules load neither torch nor
  ``peftc.testing`` (checked in a fresh interpreter).
* ``benchmarks/`` never imports ``tests`` nor puts ``tests/`` on ``sys.path``.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Rule(NamedTuple):
    """Modules under ``source`` (but not under ``exempt``) import nothing under ``forbidden``, except a target
    under ``allowed_under`` or equal to one of ``allowed_exact``."""
    source: str
    forbidden: tuple[str, ...]
    allowed_under: tuple[str, ...] = ()
    allowed_exact: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()


METHODS_AND_TRAINING = ("peftc.train", "peftc.optim", "peftc.schedule", "peftc.tuners", "peftc.tta", "peftc.prompt",
                        "peftc.examples", "peftc.demo", "peftc.distill")
RULES = [
    Rule("peftc.io", ("peftc",), allowed_under=("peftc.io", "peftc._deprecated")),
    # the package itself re-exports only the safetensors functions
    Rule("peftc.tuners", ("peftc.io",), allowed_under=("peftc.io.safetensors", "peftc.io.atomic"),
         allowed_exact=("peftc.io",)),
    Rule("peftc.models", METHODS_AND_TRAINING),
    Rule("peftc.data", ("peftc.nn", "peftc.models") + METHODS_AND_TRAINING),
    Rule("peftc", ("peftc.demo", "peftc.testing", "torch", "transformers", "peft", "tests", "benchmarks"),
         exempt=("peftc.testing",)),
    Rule("benchmarks", ("tests", "peftc.demo")),
]
# deprecated aliases: an old path forwards, lazily, to the new home of its names; these edges go with the
# aliases in the next release
ALIAS_EDGES = {
    ("peftc.io.adapter_files", "peftc.tuners.adapter_files"),
    ("peftc.models", "peftc.tta.source_model"),
    ("peftc.models.cnn", "peftc.tta.source_model"),
}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, dotted: str) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _mentions_tests(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str) and "tests" in Path(n.value).parts
               for n in ast.walk(node))


def imports_of(root: Path, path: Path) -> list[tuple[int, str, bool]]:
    """(line, absolute module name, whether it is a deprecated alias's lazy target) for every import in ``path``.

    ``from a import b`` names ``a.b`` when b is a module of the tree, else ``a``. ``moved(__name__, "x", ...)``
    names ``x`` (an alias); ``importlib.import_module("x")`` / ``__import__("x")`` name ``x``; a change of
    ``sys.path`` that mentions a ``tests`` folder counts as importing ``tests``.
    """
    name = _module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for a in node.names:
                sub = f"{module}.{a.name}"
                out.append((node.lineno, sub if _is_module(root, sub) else module, False))
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None for a in node.args]
            if fname == "moved" and len(args) >= 2 and args[1]:
                out.append((node.lineno, args[1], True))
            elif fname in ("import_module", "__import__") and args and args[0] and not args[0].startswith("."):
                out.append((node.lineno, args[0], False))
            elif (isinstance(func, ast.Attribute) and ast.unparse(func.value) == "sys.path"
                  and func.attr in ("insert", "append", "extend") and _mentions_tests(node)):
                out.append((node.lineno, "tests", False))
        elif isinstance(node, (ast.Assign, ast.AugAssign)) and _mentions_tests(node.value) and any(
                ast.unparse(t).startswith("sys.path") for t in (node.targets if isinstance(node, ast.Assign)
                                                                else [node.target])):
            out.append((node.lineno, "tests", False))
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """Every import in ``root``'s peftc/ and benchmarks/ that breaks a rule, as "file:line: a -> b"."""
    files = sorted((root / "peftc").rglob("*.py")) + sorted((root / "benchmarks").glob("*.py"))
    found = []
    for path in files:
        source = _module_name(root, path)
        for line, target, alias in imports_of(root, path):
            if alias and (source, target) in ALIAS_EDGES:
                continue
            for rule in RULES:
                if (_under(source, rule.source) and not any(_under(source, e) for e in rule.exempt)
                        and any(_under(target, f) for f in rule.forbidden)
                        and not any(_under(target, a) for a in rule.allowed_under)
                        and target not in rule.allowed_exact):
                    found.append(f"{path.relative_to(root)}:{line}: {source} -> {target}")
                    break
    return found


def test_package_and_benchmarks_keep_the_layering_rules():
    assert violations(ROOT) == []


def test_the_scan_sees_the_imports_it_judges():
    # the checker is not vacuous on this tree: known edges, lazy ones included, are found
    edges = {t for _, t, _ in imports_of(ROOT, ROOT / "peftc/tuners/peft_model.py")}
    assert {"peftc.tuners.adapter_files", "peftc.nn", "peftc.tuners.lora_config"} <= edges
    lazy = {t for _, t, _ in imports_of(ROOT, ROOT / "peftc/tuners/eva.py")}
    assert "tqdm.auto" in lazy  # imported inside a function
    aliases = {t for _, t, alias in imports_of(ROOT, ROOT / "peftc/models/cnn.py") if alias}
    assert aliases == {"peftc.tta.source_model"}


PLANTS = {
    "peftc/io/fmt.py": ("from ..tuners import peft_model\nfrom .. import nn\nfrom .atomic import write\n",
                        ["peftc.io.fmt -> peftc.tuners.peft_model", "peftc.io.fmt -> peftc.nn"]),
    "peftc/tuners/files.py": ("from ..io.safetensors import save_file\nfrom ..io import adapter_files\n",
                              ["peftc.tuners.files -> peftc.io.adapter_files"]),
    "peftc/models/net.py": ("def fit():\n    from ..train import Trainer\n", ["peftc.models.net -> peftc.train"]),
    "peftc/data/job.py": ("from ..models import tokenizer\n", ["peftc.data.job -> peftc.models.tokenizer"]),
    "peftc/nn/twin.py": ("import torch\nfrom peftc.testing import twins\n",
                         ["peftc.nn.twin -> torch", "peftc.nn.twin -> peftc.testing.twins"]),
    "peftc/models/old.py": ("from .._deprecated import moved\n__getattr__ = moved(__name__, 'peftc.tta.x', ['f'])\n",
                            ["peftc.models.old -> peftc.tta.x"]),
    # the alias edge models.cnn -> tta.source_model is allowed for moved() only, not for a real import
    "peftc/models/cnn.py": ("from ..tta.source_model import train_source_model\n",
                            ["peftc.models.cnn -> peftc.tta.source_model"]),
    "benchmarks/b1.py": ("from tests.lora_twins import TinyBert\n", ["benchmarks.b1 -> tests.lora_twins"]),
    "benchmarks/b2.py": ("import sys\nfrom pathlib import Path\n"
                         "sys.path.insert(0, str(Path(__file__).parent.parent / 'tests'))\nimport lora_twins\n",
                         ["benchmarks.b2 -> tests"]),
    "benchmarks/b3.py": ("from peftc.demo import tokenize\n", ["benchmarks.b3 -> peftc.demo"]),
    "benchmarks/b4.py": ("import importlib, sys\nsys.path[:0] = ['../tests']\nt = importlib.import_module('tests.x')\n",
                         ["benchmarks.b4 -> tests", "benchmarks.b4 -> tests.x"]),
}


def test_the_checker_reports_each_planted_violation(tmp_path):
    for folder in ("peftc/io", "peftc/tuners", "peftc/models", "peftc/data", "peftc/nn", "peftc/testing",
                   "peftc/tta", "benchmarks", "tests"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        if folder.startswith("peftc") or folder == "tests":
            (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "peftc/__init__.py").write_text("")
    for name in ("io/atomic", "io/safetensors", "io/adapter_files", "tuners/peft_model", "models/tokenizer",
                 "train", "demo", "_deprecated", "testing/twins", "tta/source_model"):
        (tmp_path / f"peftc/{name}.py").write_text("")
    (tmp_path / "tests/lora_twins.py").write_text("")
    for path, (text, _) in PLANTS.items():
        (tmp_path / path).write_text(text)
    found = violations(tmp_path)
    expected = sorted(e for _, wanted in PLANTS.values() for e in wanted)
    assert sorted(f.split(": ", 1)[1] for f in found) == expected, found


def test_importing_peftc_loads_neither_torch_nor_peftc_testing():
    code = textwrap.dedent("""
        import importlib, json, pkgutil, sys, warnings
        warnings.filterwarnings("error", message=".*has moved to.*", category=DeprecationWarning)
        import peftc
        names = []
        def walk(package):  # pkgutil.walk_packages would import peftc.testing to look inside it
            for m in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                if m.name != "peftc.testing" and not m.name.rpartition(".")[2].startswith("_"):
                    names.append(m.name)
                    module = importlib.import_module(m.name)
                    if m.ispkg:
                        walk(module)
        walk(peftc)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft", "tests")
                        or m == "peftc.testing" or m.startswith("peftc.testing."))
        print(json.dumps({"imported": names, "loaded": loaded}))
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"peftc.io", "peftc.models", "peftc.tuners", "peftc.tta", "peftc.data", "peftc.demo"} <= set(out["imported"])
    assert out["loaded"] == []


@pytest.mark.parametrize("module", ["peftc.testing", "peftc.testing.prompt_torch"])
def test_peftc_testing_is_importable_from_the_checkout(module):
    # the twins both the tests and the benchmarks use live in the package, importable from a fresh clone
    run = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
