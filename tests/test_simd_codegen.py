"""The element-wise loops that run on the encoder's widest activation compile to SIMD code: a loop the compiler
leaves scalar costs the MiniLM training step about a fifth of its time (GELU's forward and backward on N x 4H,
measured in instructions by benchmarks/step_gemm_share.py). Read from the built extension's disassembly; skipped
where there is no objdump, or where the build has no packed FMA code at all (not x86-64, or PEFTC_PORTABLE=1,
where fmaf is a library call and no such loop vectorises)."""
from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

from peftc import _C

PACKED_FMA = re.compile(r"\bvfn?m(?:add|sub)\d{3}ps\b")


def disassemble(function: str) -> str:
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={function}", _C.__file__],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def fma_build() -> None:
    if platform.machine() != "x86_64" or shutil.which("objdump") is None:
        pytest.skip("needs objdump and an x86-64 build")
    if not PACKED_FMA.search(disassemble("peftc_small_gemm_ab")):  # vector types throughout: FMA if the target has it
        pytest.skip("the extension has no packed FMA code (portable build or a CPU without FMA)")


@pytest.mark.parametrize("function", ["gelu_forward_part", "gelu_backward_part", "gelu_tanh_forward_part",
                                      "gelu_tanh_backward_part"])
def test_gelu_loops_compile_to_packed_simd(fma_build, function):
    code = disassemble(function)
    assert f"<{function}>:" in code, f"{function} not found in {_C.__file__}"
    assert PACKED_FMA.search(code), f"{function} has no packed FMA: its loop stayed scalar"
