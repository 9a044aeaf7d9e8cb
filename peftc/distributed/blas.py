"""The thread count of the OpenBLAS that peftc's extension runs on, read and set at run time.

OpenBLAS reads ``OPENBLAS_NUM_THREADS`` once, when it is loaded; a Dask worker process has usually
loaded it before its first task arrives, so a worker holds its BLAS at its own thread count by
calling :func:`set_blas_threads` (peftc's own kernels follow the same count: csrc/parallel.h).
The count is set through the extension (:func:`peftc.set_num_threads`), which calls the OpenBLAS it was
linked against, so NumPy's bundled OpenBLAS (another copy, loaded beside it) is not the one changed;
the variables of :data:`BLAS_THREAD_VARS` cover that copy in processes started later.
"""
from __future__ import annotations

from ..openblas import get_num_threads, set_num_threads

# what a process started with these variables gives every BLAS / OpenMP library it loads
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_threads() -> int:
    """The number of threads OpenBLAS (and so peftc's kernels) use in this process
    (:func:`peftc.get_num_threads`).

    Example:
        >>> from peftc.distributed import blas_threads
        >>> blas_threads() >= 1
        True
    """
    return get_num_threads()


def set_blas_threads(n: int) -> int:
    """Run OpenBLAS (and peftc's kernels) on ``n`` threads from now on in this process
    (:func:`peftc.set_num_threads`); returns the previous count.

    Example:
        >>> from peftc.distributed import blas_threads, set_blas_threads
        >>> old = set_blas_threads(1)
        >>> blas_threads()
        1
        >>> _ = set_blas_threads(old)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    old = get_num_threads()
    set_num_threads(n)
    return old


def blas_env(threads: int) -> dict[str, str]:
    """The environment variables that start a process with ``threads`` BLAS / OpenMP threads.

    Example:
        >>> from peftc.distributed import blas_env
        >>> blas_env(2)["OPENBLAS_NUM_THREADS"]
        '2'
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    return {var: str(threads) for var in BLAS_THREAD_VARS}
