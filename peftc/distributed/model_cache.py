"""Base models loaded once per process from a checkpoint folder, and built fresh for each task from the cache.

A sweep's tasks carry only the folder's path; each Dask worker process (or the caller's process, run
serially) reads the folder the first time a task asks for it and keeps the tensors. Every task then gets a
new :class:`~peftc.models.BertModel` over those same arrays: adapters wrap its layers without touching the
cache, and the arrays are read-only, so a task that writes into a frozen weight (a merge, full
fine-tuning) gets an error instead of changing the model the next task starts from.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..models import BertModel
from ..models.bert import BertConfig

_lock = threading.Lock()
_cache: dict[tuple[str, int, int], tuple[BertConfig, dict[str, np.ndarray]]] = {}
_loads: dict[str, int] = {}


def _key(folder: str | os.PathLike) -> tuple[str, int, int]:
    """(real path, mtime and size of its weights): a rewritten checkpoint is read again."""
    path = os.path.realpath(os.fspath(folder))
    for name in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"model_path {os.fspath(folder)!r} has no {name} "
                                    "(expected a Hugging Face checkpoint folder)")
    st = os.stat(os.path.join(path, "model.safetensors"))
    return path, st.st_mtime_ns, st.st_size


def base_state(model_path: str | os.PathLike) -> tuple[BertConfig, dict[str, np.ndarray]]:
    """The config and the read-only tensors of the checkpoint folder ``model_path``, read once per process.

    Example:
        >>> from peftc.distributed import base_state
        >>> from peftc.models import minilm_path
        >>> config, state = base_state(minilm_path())          # doctest: +SKIP
        >>> state["embeddings.word_embeddings.weight"].shape   # doctest: +SKIP
        (30522, 384)
    """
    from safetensors.numpy import load_file

    key = _key(model_path)
    with _lock:  # a worker with several threads reads the folder once, not once per thread
        if key not in _cache:
            config = BertConfig.from_json(os.path.join(key[0], "config.json"))
            state = load_file(os.path.join(key[0], "model.safetensors"))
            for name, a in state.items():
                if a.dtype != np.float32 or not a.flags.c_contiguous:
                    a = np.ascontiguousarray(a, dtype=np.float32)  # widened once, here, not per task
                a.setflags(write=False)
                state[name] = a
            _cache[key] = (config, state)
            _loads[key[0]] = _loads.get(key[0], 0) + 1
        return _cache[key]


def base_model(model_path: str | os.PathLike, seed: int = 0) -> BertModel:
    """A new BERT encoder (eval mode) over the process's cached tensors of ``model_path``; ``seed`` seeds its
    dropout, as in :meth:`BertModel.from_pretrained`.

    Example:
        >>> from peftc.distributed import base_model
        >>> bert = base_model("path/to/checkpoint", seed=0)   # doctest: +SKIP
    """
    config, state = base_state(model_path)
    return BertModel.from_state_dict(config, state, seed).eval()


def cache_loads() -> dict[str, int]:
    """How many times this process has read each checkpoint folder (real path -> count).

    Example:
        >>> from peftc.distributed import cache_loads
        >>> isinstance(cache_loads(), dict)
        True
    """
    with _lock:
        return dict(_loads)
