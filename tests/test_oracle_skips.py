"""Where test oracles are required (CI=true, or PEFTC_REQUIRE_ORACLES=1), a test skipped because torch,
transformers, PEFT, SciPy or Pillow cannot be imported fails; every other skip stays a skip. Each case
runs pytest on small test files in a subprocess, with the oracles hidden from import there."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# hides the modules named in PEFTC_TEST_HIDE from import, as if they were not installed
HIDING_CONFTEST = '''
import os
import sys

HIDDEN = set(filter(None, os.environ.get("PEFTC_TEST_HIDE", "").split(",")))


class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hide())
'''

TESTS = '''
import pytest


def test_scipy_oracle():
    pytest.importorskip("scipy.ndimage")


def test_pillow_oracle():
    pytest.importorskip("PIL")


def test_torch_fixture(torch):
    pass


def test_module_that_is_no_oracle():
    pytest.importorskip("peftc_no_such_module")


def test_deliberate_skip():
    pytest.skip("a Debian data package is not installed")
'''

MODULE_LEVEL = '''
import pytest

peft = pytest.importorskip("peft")


def test_uses_peft():
    pass
'''

TEST_NAMES = ["test_scipy_oracle", "test_pillow_oracle", "test_torch_fixture", "test_module_that_is_no_oracle",
              "test_deliberate_skip", "test_module_level"]


def run_pytest(tmp_path: Path, **env: str) -> dict[str, str]:
    """Outcome per test (passed, skipped, failed, error), with scipy, PIL, torch and peft hidden."""
    (tmp_path / "conftest.py").write_text(HIDING_CONFTEST)
    (tmp_path / "test_oracles.py").write_text(TESTS)
    (tmp_path / "test_module_level.py").write_text(MODULE_LEVEL)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "PEFTC_REQUIRE_ORACLES", "PEFTC_NO_TORCH")}
    full_env = {**base, "PYTHONPATH": str(ROOT), "PEFTC_TEST_HIDE": "scipy,PIL,torch,peft",
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env}
    xml = tmp_path / "report.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--continue-on-collection-errors", "--rootdir", str(tmp_path), f"--junitxml={xml}",
                           str(tmp_path)],
                          env=full_env, cwd=tmp_path, capture_output=True, text=True)
    outcomes = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        kind = next((c.tag for c in case if c.tag in ("skipped", "failure", "error")), "passed")
        name = case.get("name") or case.get("classname")
        if not name:  # a collection report: named by its module
            name = case.get("classname", "")
        outcomes[name.split(".")[-1]] = {"failure": "failed"}.get(kind, kind)
    assert set(outcomes) == set(TEST_NAMES), (outcomes, proc.stdout, proc.stderr)
    assert (proc.returncode == 0) == all(o in ("passed", "skipped") for o in outcomes.values()), proc.stdout
    return outcomes


ALL_SKIPPED = dict.fromkeys(TEST_NAMES, "skipped")
ORACLES_FAIL = {**ALL_SKIPPED, "test_scipy_oracle": "failed", "test_pillow_oracle": "failed",
                "test_torch_fixture": "error", "test_module_level": "error"}  # errors: fixture setup, collection


@pytest.mark.parametrize("env,expected", [
    ({}, ALL_SKIPPED),
    ({"CI": "true"}, ORACLES_FAIL),
    ({"PEFTC_REQUIRE_ORACLES": "1"}, ORACLES_FAIL),
    ({"CI": "true", "PEFTC_REQUIRE_ORACLES": "0"}, ALL_SKIPPED),
    ({"CI": "true", "PEFTC_NO_TORCH": "1"}, {**ORACLES_FAIL, "test_torch_fixture": "skipped"}),
], ids=["local", "ci", "required", "ci-opted-out", "ci-sanitizer-build"])
def test_missing_oracle_skips_fail_only_where_oracles_are_required(tmp_path, env, expected):
    assert run_pytest(tmp_path, **env) == expected
