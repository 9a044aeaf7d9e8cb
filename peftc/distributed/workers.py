"""The Dask side of peftc.distributed: the worker plugin that holds each worker's BLAS threads, a local
cluster set up for peftc, and waiting on futures with Dask's progress bar and a time limit.

Imported only when a ``distributed.Client`` is used: peftc.distributed runs serially without Dask.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence

from distributed import Client, Future, LocalCluster, WorkerPlugin, progress, wait

from .blas import blas_env, set_blas_threads

PLUGIN_NAME = "peftc-hold-blas-threads"
SETTLED = ("finished", "error", "cancelled")  # the future states that no longer change by themselves


class HoldBlasThreads(WorkerPlugin):
    """On every worker (those joining later too): BLAS and peftc's kernels on ``threads`` threads, by
    default the worker's own thread count, and the same count in the variables its child processes inherit.

    Example:
        >>> from distributed import Client                                      # doctest: +SKIP
        >>> client.register_plugin(HoldBlasThreads(), name=PLUGIN_NAME)          # doctest: +SKIP
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def setup(self, worker) -> None:
        n = self.threads or worker.state.nthreads
        os.environ.update(blas_env(n))
        set_blas_threads(n)


def hold_blas_threads(client: Client, threads: int | None = None) -> None:
    """Register :class:`HoldBlasThreads` on ``client``'s cluster (replacing an earlier registration).

    Example:
        >>> hold_blas_threads(client)        # every worker: BLAS on its own thread count   # doctest: +SKIP
        >>> hold_blas_threads(client, 2)     # every worker: 2 BLAS threads                  # doctest: +SKIP
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"blas_threads must be None or an int >= 1, got {threads!r}")
    client.register_plugin(HoldBlasThreads(threads), name=PLUGIN_NAME)


def local_cluster(n_workers: int | None = None, threads_per_worker: int = 1, **kwargs) -> LocalCluster:
    """A LocalCluster of worker processes on 127.0.0.1 whose BLAS variables are set to ``threads_per_worker``
    before the workers start (``n_workers`` defaults to the cores divided by ``threads_per_worker``); other
    keyword arguments go to ``distributed.LocalCluster``. The dashboard is Dask's, where Dask puts it (it
    needs ``bokeh``).

    Example:
        >>> from distributed import Client
        >>> from peftc.distributed import local_cluster, run_sweep
        >>> with local_cluster(2) as cluster, Client(cluster) as client:    # doctest: +SKIP
        ...     results = run_sweep(train, configs, client)
    """
    if n_workers is None:
        n_workers = max(1, (os.cpu_count() or 1) // threads_per_worker)
    env = {**blas_env(threads_per_worker), **kwargs.pop("env", {})}
    kwargs.setdefault("host", "127.0.0.1")  # the dashboard stays Dask's: its default address unless given
    return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, env=env, **kwargs)


def wait_all(futures: Sequence[Future], timeout: float | None, show_progress: bool, what: str) -> None:
    """Wait until every future is finished, failed or cancelled, with Dask's progress bar (a widget in a
    notebook, text in a terminal, drawn from a helper thread so that ``timeout`` still applies); on timeout
    cancel them all and raise TimeoutError naming the unfinished positions. A future whose result was lost
    with its worker after it finished is waited for again while the scheduler recomputes it.

    Example:
        >>> futures = [client.submit(train, c, pure=False) for c in configs]    # doctest: +SKIP
        >>> wait_all(futures, timeout=600, show_progress=True, what="my sweep")  # doctest: +SKIP
    """
    if show_progress and futures:
        from distributed.utils import is_kernel

        if is_kernel():
            progress(list(futures), notebook=True)
        else:
            threading.Thread(target=progress, args=(list(futures),), kwargs={"notebook": False},
                             daemon=True, name="peftc-progress").start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        # A worker that dies after the wait returned takes the results it held with it: their futures turn
        # "lost" and the scheduler recomputes them. Wait again until none is left unsettled.
        while unsettled := [f for f in futures if f.status not in SETTLED]:
            wait(unsettled, timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0))
    except (TimeoutError, asyncio.TimeoutError):  # the same class from Python 3.11 on
        late = [i for i, f in enumerate(futures) if f.status not in SETTLED]
        for f in futures:
            f.cancel()
        raise TimeoutError(f"{what}: {len(late)} of {len(futures)} tasks unfinished after {timeout} s "
                           f"(positions {late[:20]}{' ...' if len(late) > 20 else ''}); all cancelled") from None
