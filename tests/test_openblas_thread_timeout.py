"""Importing peftc shortens OpenBLAS's idle spin (OPENBLAS_THREAD_TIMEOUT) unless the user set it, and peftc's
OpenBLAS takes its thread count from OPENBLAS_NUM_THREADS, whichever build it is (the scipy-openblas32 wheel
reads the same variables as the system library). OpenBLAS reads them once, when it loads, so each case runs in
a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "import json, peftc; print(json.dumps(peftc.openblas.openblas_info()))"


def _info_seen(**variables: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in variables}
    env.update({k: v for k, v in variables.items() if v is not None})
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True, cwd=ROOT, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_import_sets_a_short_thread_timeout_before_openblas_loads():
    assert _info_seen(OPENBLAS_THREAD_TIMEOUT=None)["thread_timeout"] == 14


def test_a_thread_timeout_the_user_set_is_kept():
    assert _info_seen(OPENBLAS_THREAD_TIMEOUT="20")["thread_timeout"] == 20


def test_openblas_num_threads_sets_the_thread_count_of_peftcs_openblas():
    assert _info_seen(OPENBLAS_NUM_THREADS="1")["num_threads"] == 1
    assert _info_seen(OPENBLAS_NUM_THREADS="2")["num_threads"] == 2


def test_openblas_info_names_the_library_the_extension_calls():
    info = _info_seen()
    assert info["build"] in ("scipy-openblas32", "system")
    expected = "libscipy_openblas" if info["build"] == "scipy-openblas32" else "libopenblas"
    assert Path(info["library"]).name.startswith(expected), info
    assert info["config"].startswith("OpenBLAS 0.3."), info
