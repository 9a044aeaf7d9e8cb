"""benchmarks/step_gemm_share.py reads callgrind's output right: own and inclusive instruction counts with
callgrind's name compression, calls counted, and the step's not-GEMM share from them (no valgrind run here)."""
from __future__ import annotations

import pytest

from .benchmark_scripts import load_benchmark

# main (100 own) calls the BLAS sgemm twice (1000 inclusive: 200 own + its kernel's 800) and, through
# PyEval (50 own), peftc's small GEMM once (40); names are compressed after their first use, as callgrind writes
CALLGRIND = """version: 1
creator: callgrind-3.19.0
positions: line
events: Ir
ob=(1) /usr/bin/python3
fl=(1) ???
fn=(1) main
0 100
cob=(2) /lib/libscipy_openblas.so
cfi=(2) ???
cfn=(2) scipy_cblas_sgemm
calls=2 0
0 1000
cfn=(3) PyEval
calls=1 0
+2 90
fn=(3)
0 30
+1 20
cob=(3) /peftc/_C.so
cfn=(5) peftc_small_gemm_abt
calls=1 0
0 40
ob=(3)
fn=(5)
0 40
ob=(2)
fl=(2)
fn=(2)
0 200
cfn=(4) sgemm_kernel_HASWELL
calls=5 0
0 800
fn=(4)
0 800

totals: 1190
"""


@pytest.fixture(scope="module")
def share():
    return load_benchmark("step_gemm_share")


def test_callgrind_file_gives_own_inclusive_costs_and_calls(share, tmp_path):
    path = tmp_path / "callgrind.out"
    path.write_text(CALLGRIND)
    own, inclusive, calls = share.parse_callgrind(path)
    assert own == {("/usr/bin/python3", "main"): 100, ("/usr/bin/python3", "PyEval"): 50,
                   ("/peftc/_C.so", "peftc_small_gemm_abt"): 40, ("/lib/libscipy_openblas.so", "scipy_cblas_sgemm"): 200,
                   ("/lib/libscipy_openblas.so", "sgemm_kernel_HASWELL"): 800}
    assert inclusive["scipy_cblas_sgemm"] == 1000 and inclusive["main"] == 1190 and inclusive["PyEval"] == 90
    assert calls["scipy_cblas_sgemm"] == 2 and calls["sgemm_kernel_HASWELL"] == 5


def test_not_gemm_share_counts_blas_and_own_products_as_gemm(share, tmp_path):
    path = tmp_path / "callgrind.out"
    path.write_text(CALLGRIND)
    r = share.profile(path, steps=2)
    assert r["ir_per_step"] == 1190 / 2
    assert r["gemm_blas_ir_per_step"] == 1000 / 2 and r["gemm_own_ir_per_step"] == 40 / 2
    assert r["non_gemm_share"] == pytest.approx(150 / 1190)
    assert r["sgemm_calls_per_step"] == 1
    assert [t["function"] for t in r["top_non_gemm"]] == ["main", "PyEval"]
