"""The kernels' worker threads are kept between calls (csrc/parallel.c): a forked child, which has
none of the parent's threads, builds its own and gets the parent's bits; calls from several Python
threads at once share or bypass the pool and still give the single-call bits."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from peftc import functional as F


def threaded_work(seed: int) -> list[np.ndarray]:
    """A convolution and a batch norm large enough to split over two threads."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 16, 14, 14), dtype=np.float32)
    w = rng.standard_normal((16, 16, 3, 3), dtype=np.float32)
    y = F.conv2d_forward(x, w, None, 1, 1)
    z, mean, rstd = F.batchnorm2d_forward(y, None, None, None, None, True, 0.1, 1e-5)
    return [y, z, mean, rstd]


def run_in_subprocess(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_forked_child_runs_threaded_kernels_with_the_parents_bits():
    code = f"""
import os, sys, numpy as np
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_thread_pool import threaded_work
parent = threaded_work(0)  # starts the pool
pid = os.fork()
if pid == 0:
    child = threaded_work(0)
    os._exit(0 if all(np.array_equal(a, b) for a, b in zip(parent, child)) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    done = run_in_subprocess(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_kernels_called_from_several_threads_at_once_match_one_call():
    code = f"""
import os, sys, threading, numpy as np
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_thread_pool import threaded_work
expected = threaded_work(1)
results = []
def call():
    try:
        for _ in range(5):
            results.append(threaded_work(1))
    except BaseException as e:
        results.append(e)
threads = [threading.Thread(target=call) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ok = len(results) == 20 and all(not isinstance(r, BaseException)
                                and all(np.array_equal(a, b) for a, b in zip(r, expected)) for r in results)
print("ok" if ok else [r for r in results if isinstance(r, BaseException)] or "different bits")
"""
    done = run_in_subprocess(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
