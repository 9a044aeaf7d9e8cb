"""One Adapt-inf time step on a pool of scored examples: cluster, prune, choose selectors, sample.

Order (as in the paper's code, which de-duplicates before it selects): the sample vectors of the whole
current pool are clustered (k-means, k fixed or by :func:`peftc.lifelong.kmeans.choose_k`); with pruning on,
the pool is cut permanently to its bound (:func:`peftc.lifelong.prune.prune_pool`); then the training budget
is spread over the clusters (:func:`peftc.lifelong.budget.allocate`) and each cluster is sampled by CCS on
the scores of its highest-histogram-entropy selector.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .budget import allocate, ccs_sample
from .kmeans import choose_k, kmeans
from .prune import prune_pool
from .selectors import choose_selector


@dataclass(frozen=True)
class AdaptInfConfig:
    """``k``: clusters (None: chosen per step among ``k_candidates`` by ``k_rule``); ``pool_bound``: the most
    examples the pool keeps after pruning (None: no bound); ``dedup_threshold``: cosine above which a later
    example of a cluster is a duplicate (None: none); ``prune``: whether to prune at all."""

    k: int | None = None
    k_candidates: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 16)
    k_rule: str = "wss"
    prune: bool = True
    pool_bound: int | None = None
    dedup_threshold: float | None = 0.98
    strata: int = 50
    compat_hist: bool = False


@dataclass
class StepSelection:
    """``keep``: pool rows that stay stored; ``train``: pool rows to train on (a subset of ``keep``);
    ``labels``: the cluster of each pool row; ``selectors``: the chosen selector per cluster."""

    keep: np.ndarray
    train: np.ndarray
    labels: np.ndarray
    k: int
    selectors: list[str] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)


def _check_pool(vectors: np.ndarray, config: AdaptInfConfig) -> int:
    n = vectors.shape[0] if getattr(vectors, "ndim", 0) == 2 else -1
    if n < 1:
        raise ValueError(f"vectors must be a non-empty (n, d) array, got {getattr(vectors, 'shape', vectors)}")
    if config.k is not None and config.k > n:
        raise ValueError(f"k = {config.k} clusters need at least k samples, the pool has {n} (vectors {vectors.shape})")
    return n


def cluster_and_prune(vectors: np.ndarray, seed: int, config: AdaptInfConfig = AdaptInfConfig()
                      ) -> tuple[int, np.ndarray, np.ndarray]:
    """(k, cluster labels (n,), sorted rows the pool keeps) of a pool of unit sample vectors (n, d).

    >>> v = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]]
    >>> cluster_and_prune(v, 0, AdaptInfConfig(k=2, dedup_threshold=0.99))[2].tolist()
    [0, 2, 3, 4]
    """
    n = _check_pool(vectors, config)
    k = config.k if config.k is not None else choose_k(vectors, list(config.k_candidates), seed, config.k_rule)[0]
    labels = kmeans(vectors, k, seed).labels
    keep = np.arange(n)
    if config.prune and (config.pool_bound is not None or config.dedup_threshold is not None):
        keep = prune_pool(vectors, labels, config.pool_bound if config.pool_bound is not None else n,
                          config.dedup_threshold)
    return int(k), labels, keep


def sample_clusters(scores: dict[str, np.ndarray], labels: np.ndarray, rows: np.ndarray, k: int, budget: int,
                    seed: int, config: AdaptInfConfig = AdaptInfConfig()) -> tuple[np.ndarray, list[str], list[int]]:
    """(sorted training rows, selector per cluster, budget per cluster): ``budget`` examples among ``rows``
    (those the pool keeps), spread over their clusters, each cluster sampled by CCS on its chosen selector.

    >>> s = {"loss": np.arange(6.0)}
    >>> sample_clusters(s, np.array([0, 0, 0, 1, 1, 1]), np.arange(6), 2, 2, seed=0)[2]
    [1, 1]
    """
    n = labels.shape[0]
    for name, v in scores.items():
        if np.shape(v) != (n,):
            raise ValueError(f"scores[{name!r}] has shape {np.shape(v)}, labels has {n} rows")
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget}")
    if budget > rows.size:
        raise ValueError(f"budget {budget} exceeds the pool of {rows.size} examples (of {n} before pruning)")
    rng = np.random.default_rng([int(seed), 0xCC5])
    kept_labels = labels[rows]
    budgets = allocate(np.bincount(kept_labels, minlength=k), int(budget))
    train, chosen = [], []
    for c in range(k):
        members = rows[kept_labels == c]
        if members.size == 0 or budgets[c] == 0:
            chosen.append("")
            continue
        name, _ = choose_selector(scores, members, compat=config.compat_hist)
        chosen.append(name)
        picked = ccs_sample(np.asarray(scores[name])[members], int(budgets[c]), rng, strata=config.strata)
        train.append(members[picked])
    train_rows = np.sort(np.concatenate(train)) if train else np.zeros(0, np.int64)
    return train_rows, chosen, budgets.tolist()


def select_step(vectors: np.ndarray, scores: dict[str, np.ndarray], budget: int, seed: int,
                config: AdaptInfConfig = AdaptInfConfig()) -> StepSelection:
    """Adapt-inf's selection on a pool of n examples: ``vectors`` (n, d) unit sample vectors, ``scores``
    {selector: (n,)}, ``budget`` training examples (at most the pool left after pruning).

    >>> rng = np.random.default_rng(0)
    >>> v = rng.standard_normal((40, 8)).astype(np.float32)
    >>> s = {"loss": rng.random(40), "el2n": rng.random(40)}
    >>> sel = select_step(v, s, budget=10, seed=0, config=AdaptInfConfig(k=3, pool_bound=30))
    >>> len(sel.keep), len(sel.train), set(sel.train) <= set(sel.keep)
    (30, 10, True)
    """
    n = _check_pool(vectors, config)
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget}")
    if budget > n:
        raise ValueError(f"budget {budget} exceeds the pool of {n} examples (vectors {vectors.shape})")
    k, labels, keep = cluster_and_prune(vectors, seed, config)
    train, chosen, budgets = sample_clusters(scores, labels, keep, k, budget, seed, config)
    return StepSelection(keep, train, labels, k, chosen, budgets)
