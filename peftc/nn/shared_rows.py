"""Identical input rows: a layer input whose rows are copies of fewer distinct rows, so a frozen product of it
can be made once per distinct row and gathered.

A BERT training step on identical rows (N adapters trained on the same batch) runs the frozen blocks below the
adapters once per distinct row and hands every row its distinct row's tokens at the first block that differs
(:meth:`peftc.models.BertModel.forward`). That block's query, key and value read the block input itself, so
their frozen products are the same for all the copies: inside :func:`shared_input_rows` a
:class:`~peftc.nn.Linear` or a mixed-adapter :class:`~peftc.nn.LoraLinear` given exactly that array (the same
object) multiplies the distinct rows and gathers the result; anything else, and any other layer type, runs as
usual (correct either way, only slower).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np

# (the expanded input, its distinct rows, the distinct row of each input row) while a model declares one
_SHARED: ContextVar[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = ContextVar("peftc_shared_input_rows",
                                                                                  default=None)


@contextlib.contextmanager
def shared_input_rows(x: np.ndarray, distinct: np.ndarray, source: np.ndarray) -> Iterator[None]:
    """Inside the block the array ``x`` (N, H) equals ``distinct[source]`` (``distinct`` (D, H), ``source`` int64
    (N,) in [0, D)): a layer that is handed ``x`` may compute on ``distinct`` and gather (:func:`distinct_rows`).

    Example:
        >>> d = np.arange(6, dtype=np.float32).reshape(2, 3); src = np.array([0, 1, 0, 1])
        >>> x = d[src]
        >>> with shared_input_rows(x, d, src):
        ...     distinct_rows(x)[0] is d, distinct_rows(x.copy()) is None
        (True, True)
    """
    if x.ndim != 2 or distinct.ndim != 2 or source.shape != (x.shape[0],) or x.shape[1] != distinct.shape[1]:
        raise ValueError(f"shared_input_rows: x {x.shape} must be distinct {distinct.shape} [source {source.shape}]")
    token = _SHARED.set((x, distinct, source))
    try:
        yield
    finally:
        _SHARED.reset(token)


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(distinct rows, source index) when ``x`` is the array declared by :func:`shared_input_rows`, else None."""
    shared = _SHARED.get()
    if shared is None or shared[0] is not x:
        return None
    return shared[1], shared[2]
