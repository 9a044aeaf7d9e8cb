"""run_sweep: one training run per config, serially or as Dask tasks, the results back in config order.

A run that raises does not stop the others: its :class:`SweepResult` carries the error, which names the
config. Each task is submitted with ``pure=False`` (a run is never served from Dask's cache of an equal
earlier call: two runs of one config are two trainings), and a config carries its own ``seed``, so a
run's result does not depend on the worker, the order or the retries that computed it. A worker that
dies mid-sweep loses nothing: the scheduler reruns its tasks elsewhere, and each config's result is the
one its own future holds, so none is lost or counted twice.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ..train import progress_disabled


class SweepError(RuntimeError):
    """A sweep run failed; the message names its config."""


@dataclass(frozen=True)
class SweepResult:
    """The outcome of one config: ``value`` (what ``train_fn`` returned) or ``error`` (a message naming the
    config) and ``traceback`` (the worker's, as text)."""

    index: int
    config: Any
    value: Any = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        """``value``, or raise :class:`SweepError` with the error message and the traceback."""
        if self.error is not None:
            raise SweepError(f"{self.error}\n{self.traceback or ''}")
        return self.value


def config_seed(config: Any) -> int:
    """The ``seed`` of a config: a mapping's ``"seed"`` or an object's ``.seed``, an int.

    Example:
        >>> from peftc.distributed import config_seed
        >>> config_seed({"lr": 1e-3, "seed": 4})
        4
    """
    seed = config.get("seed") if isinstance(config, Mapping) else getattr(config, "seed", None)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"every config needs an explicit int seed (config['seed'] or config.seed), "
                         f"got {seed!r} in {config!r}")
    return seed


def _failure(index: int, config: Any, exc: BaseException, tb: str | None) -> SweepResult:
    return SweepResult(index, config, error=f"config {index} {config!r} failed: {type(exc).__name__}: {exc}",
                       traceback=tb)


def run_sweep(train_fn: Callable[[Any], Any], configs: Sequence[Any], client: Any = None, *,
              timeout: float | None = None, progress: bool = True,
              blas_threads: int | None = None) -> list[SweepResult]:
    """Run ``train_fn(config)`` for every config; return one :class:`SweepResult` per config, in config order.

    ``train_fn`` returns what a run produces (metrics, the adapter's state dict as NumPy arrays); it loads
    its base model with :func:`peftc.distributed.base_model` from a path in the config, so each process
    reads the checkpoint once and no task carries it. Every config must hold an int ``seed`` (a key or an
    attribute) that ``train_fn`` seeds everything from.

    ``client=None`` runs the configs one after the other in this process (a tqdm bar when ``progress``).
    A ``distributed.Client`` runs one task per config on its cluster (``pure=False``; Dask's progress bar
    when ``progress``; ``timeout`` seconds for the whole sweep, after which the rest is cancelled and
    TimeoutError raised); every worker's BLAS and peftc's kernels are first held at ``blas_threads``
    threads, by default the worker's own thread count (use one-thread workers: a worker with k threads
    runs k tasks at once, each on the k BLAS threads).

    Example:
        >>> from peftc.distributed import run_sweep
        >>> def train(config):
        ...     return {"score": config["lr"] * config["seed"]}
        >>> results = run_sweep(train, [{"lr": 0.1, "seed": 1}, {"lr": 0.2, "seed": 2}], progress=False)
        >>> [r.value["score"] for r in results]
        [0.1, 0.4]
        >>> # on a cluster: run_sweep(train, configs, Client("tcp://scheduler:8786"))
    """
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable, got {type(train_fn).__name__}")
    if isinstance(configs, (str, bytes, Mapping)) or not isinstance(configs, Sequence):
        raise TypeError(f"configs must be a sequence of configs, got {type(configs).__name__}")
    for i, config in enumerate(configs):
        try:
            config_seed(config)
        except ValueError as e:
            raise ValueError(f"configs[{i}]: {e}") from None
    if client is None:
        return _run_serial(train_fn, configs, progress)
    return _run_on_cluster(train_fn, configs, client, timeout, progress, blas_threads)


def _run_serial(train_fn: Callable[[Any], Any], configs: Sequence[Any], progress: bool) -> list[SweepResult]:
    out = []
    bar = tqdm(configs, desc="sweep", disable=progress_disabled(progress), dynamic_ncols=True)
    for i, config in enumerate(bar):
        try:
            out.append(SweepResult(i, config, value=train_fn(config)))
        except Exception as e:  # a failed run is reported, the others run
            out.append(_failure(i, config, e, traceback.format_exc()))
    return out


def _run_on_cluster(train_fn: Callable[[Any], Any], configs: Sequence[Any], client: Any, timeout: float | None,
                    progress: bool, blas_threads: int | None) -> list[SweepResult]:
    from .workers import hold_blas_threads, wait_all

    hold_blas_threads(client, blas_threads)
    # retries=0: a run that raises is reported, not repeated; a run whose worker died is rerun by the scheduler
    futures = [client.submit(train_fn, config, pure=False, retries=0) for config in configs]
    try:
        wait_all(futures, timeout, progress, "run_sweep")
        out = []
        for i, (config, future) in enumerate(zip(configs, futures)):
            if future.status == "finished":
                out.append(SweepResult(i, config, value=future.result()))
            elif future.status == "error":
                tb = future.traceback()
                out.append(_failure(i, config, future.exception(), "".join(traceback.format_tb(tb)) if tb else None))
            else:  # cancelled (by another client, or the cluster shut down)
                out.append(_failure(i, config, RuntimeError(f"task {future.status}"), None))
        return out
    finally:
        client.cancel(futures)  # frees the results held on the workers
