"""Importing peftc shortens OpenBLAS's idle spin (OPENBLAS_THREAD_TIMEOUT) unless the user set it. OpenBLAS
reads the variable once, when it loads, so each case runs in a fresh process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = r"""
import ctypes
from pathlib import Path
import peftc
maps = Path("/proc/self/maps").read_text().splitlines()
path = sorted({line.split()[-1] for line in maps if "libopenblas" in line and "/" in line})[0]
print(ctypes.CDLL(path).openblas_thread_timeout())
"""


def _timeout_seen(value: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = value
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True, cwd=ROOT, capture_output=True, text=True)
    return int(out.stdout.strip())


def test_import_sets_a_short_thread_timeout_before_openblas_loads():
    assert _timeout_seen(None) == 14


def test_a_thread_timeout_the_user_set_is_kept():
    assert _timeout_seen("20") == 20
