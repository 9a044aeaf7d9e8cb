"""IncrementalPCA: the running PCA state of one layer's inputs, updated one minibatch at a time.

The arithmetic is the C kernel ``peftc.functional.ipca_update`` (scikit-learn's partial_fit with an
exact thin SVD); this class only owns the arrays and the scratch buffer between calls.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F


class IncrementalPCA:
    """PCA of a stream of row blocks (M, IC) keeping ``n_components`` components.

    After the first :meth:`partial_fit`: ``components_`` (K, IC), ``singular_values_`` (K,),
    ``mean_`` and ``var_`` (IC,), ``n_samples_seen_``, ``explained_variance_ratio_`` (K,) and
    ``cosine_`` (K,), the cosine similarity of each component to the one before the last update.
    """

    def __init__(self, n_components: int, n_features: int) -> None:
        if n_components <= 0 or n_components > n_features:
            raise ValueError(f"n_components={n_components} must be in [1, n_features={n_features}]")
        k, ic = n_components, n_features
        self.n_components = k
        self.n_features = ic
        self.components_ = np.zeros((k, ic), dtype=np.float32)
        self.singular_values_ = np.zeros(k, dtype=np.float32)
        self.mean_ = np.zeros(ic, dtype=np.float32)
        self.var_ = np.zeros(ic, dtype=np.float32)
        self.explained_variance_ratio_ = np.zeros(k, dtype=np.float32)
        self.cosine_ = np.zeros(k, dtype=np.float32)
        self.n_samples_seen_ = 0
        self._work = np.empty(0, dtype=np.float32)

    @property
    def fitted(self) -> bool:
        return self.n_samples_seen_ > 0

    def partial_fit(self, x: np.ndarray) -> IncrementalPCA:
        """Fold the rows of x (M, IC), float32 C-contiguous, into the state."""
        F.ipca_update(x, self.components_, self.singular_values_, self.mean_, self.var_, self.n_samples_seen_,
                      explained_variance_ratio=self.explained_variance_ratio_, cosine=self.cosine_,
                      work=self._scratch(x))
        self.n_samples_seen_ += x.shape[0]
        return self

    def _scratch(self, x: np.ndarray) -> np.ndarray:
        need = F.ipca_workspace_size(x.shape[0], self.n_features, self.n_components) if x.ndim == 2 else 0
        if self._work.size < need:
            self._work = np.empty(need, dtype=np.float32)
        return self._work


def partial_fit_many(pcas: list[IncrementalPCA], rows: list[np.ndarray], labels: list[str] | None = None) -> None:
    """``pcas[i].partial_fit(rows[i])`` for every i, the distinct PCAs updated side by side on the
    BLAS thread count (:func:`peftc.functional.ipca_update_many`); same results as one at a time.
    A failure raises ValueError naming ``labels[i]``; the PCAs that did not fail are updated."""
    if len({id(p) for p in pcas}) != len(pcas):
        raise ValueError("partial_fit_many: a PCA appears twice; update it in two calls, in order")
    jobs = [(p.components_, p.singular_values_, p.mean_, p.var_, p.explained_variance_ratio_, p.cosine_,
             p._scratch(x), x, p.n_samples_seen_) for p, x in zip(pcas, rows, strict=True)]
    errors = F.ipca_update_many(jobs)
    for p, x, err in zip(pcas, rows, errors):
        if err is None:
            p.n_samples_seen_ += x.shape[0]
    failed = [i for i, err in enumerate(errors) if err is not None]
    if failed:
        i = failed[0]
        raise ValueError(f"{labels[i] if labels else f'pcas[{i}]'}: {errors[i].split(': ', 2)[-1]}")
