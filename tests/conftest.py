"""Shared test helpers: tolerance checks that print the error, float64 finite differences, torch."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

# Test oracles that CI installs (requirements-dev.txt and scripts/install_deps.sh; Pillow comes with
# matplotlib). Where they are required, a test skipped because one cannot be imported fails instead, so
# that a comparison never silently drops out of a CI run. Deliberate skips (PEFTC_NO_TORCH=1 under the
# sanitizer build, a missing Debian data package) stay skips.
ORACLE_MODULES = frozenset({"torch", "transformers", "peft", "scipy", "PIL"})


def oracles_required() -> bool:
    """PEFTC_REQUIRE_ORACLES=1 / 0 decides; unset, they are required when CI=true."""
    flag = os.environ.get("PEFTC_REQUIRE_ORACLES")
    if flag is not None:
        return flag == "1"
    return os.environ.get("CI", "").lower() == "true"


def missing_oracle(skip_message: str) -> str | None:
    """The oracle named by a ``pytest.importorskip`` skip message, or None for any other skip."""
    m = re.search(r"could not import '([\w.]+)'", skip_message)
    if m and m.group(1).split(".")[0] in ORACLE_MODULES:
        return m.group(1)
    return None


def _oracle_failure(message: str) -> str | None:
    name = missing_oracle(message)
    if name is None or not oracles_required():
        return None
    return (f"test oracle {name!r} could not be imported, and oracles are required here (CI=true or "
            f"PEFTC_REQUIRE_ORACLES=1; PEFTC_REQUIRE_ORACLES=0 allows the skip): {message}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and call.excinfo is not None:
        failure = _oracle_failure(str(call.excinfo.value))
        if failure is not None:
            report.outcome = "failed"
            report.longrepr = failure
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if report.skipped:  # a module-level importorskip
        longrepr = report.longrepr
        failure = _oracle_failure(str(longrepr[2] if isinstance(longrepr, tuple) else longrepr))
        if failure is not None:
            report.outcome = "failed"
            report.longrepr = failure
    return report


def assert_close(actual, expected, rtol: float, atol: float, name: str = "") -> None:
    """np.testing-style closeness that reports max-abs and max-relative error on failure."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    if not np.all(err <= bound):
        rel = err / np.maximum(np.abs(expected), 1e-30)
        raise AssertionError(f"{name}: max abs err {err.max():.3e}, max rel err {rel.max():.3e} "
                             f"(rtol={rtol}, atol={atol}, {int((err > bound).sum())}/{err.size} elements off)")


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to x (float64, perturbed in place)."""
    assert x.dtype == np.float64
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def torch():
    """torch (CPU) as an oracle; tests using it skip cleanly where it is absent or disabled."""
    if os.environ.get("PEFTC_NO_TORCH") == "1":
        pytest.skip("torch disabled (PEFTC_NO_TORCH=1, e.g. under the sanitizer build)")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch
