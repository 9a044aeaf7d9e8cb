"""peftc.distributed: sweeps and corpus-scale inference on a Dask cluster (``pip install peftc[distributed]``).

- :func:`run_sweep`: one training run per config, serially or as Dask tasks, results in config order;
- :func:`map_corpus`: an adapted model over a corpus, in shards written atomically, resumable;
- :func:`base_model`: the base model each process reads once from a checkpoint folder;
- :func:`local_cluster`: a LocalCluster of one-thread workers with their BLAS variables set.

Without a client everything runs in this process and Dask is not imported.
"""
from __future__ import annotations

from .blas import blas_env, blas_threads, set_blas_threads
from .corpus import CorpusOutput, load_shards, map_corpus
from .model_cache import base_model, base_state, cache_loads
from .sweep import SweepError, SweepResult, config_seed, run_sweep

__all__ = ["CorpusOutput", "HoldBlasThreads", "SweepError", "SweepResult", "base_model", "base_state", "blas_env",
           "blas_threads", "cache_loads", "config_seed", "load_shards", "local_cluster", "map_corpus", "run_sweep",
           "set_blas_threads"]


def __getattr__(name: str):
    if name in ("HoldBlasThreads", "local_cluster"):  # these need Dask, imported on first use
        from . import workers
        return getattr(workers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
