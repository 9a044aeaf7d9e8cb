"""Adapt-inf's selection pieces: vectors, k-means (C against NumPy), the choice of k, selectors, budgets, CCS,
pruning (the pool bound over a long stream), determinism and bad input; and the modules' docstring examples."""
from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from peftc.lifelong import adapt_inf, budget, kmeans, prune, selectors, vectors
from peftc.lifelong.adapt_inf import AdaptInfConfig, cluster_and_prune, select_step


def blobs(seed=0, centers=3, per=20, d=8, spread=0.05):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)) * 3
    return np.concatenate([c[i] + spread * rng.standard_normal((per, d)) for i in range(centers)]).astype(np.float32)


@pytest.mark.parametrize("name", ["kernels", "reference", "vectors", "kmeans", "selectors", "budget", "prune",
                                  "adapt_inf", "stream"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"peftc.lifelong.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_projection_preserves_inner_products_within_jl_error():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((20, 600)).astype(np.float32)
    proj = vectors.projection_matrix(600, 2048, seed=3)
    u, norms = vectors.sample_vectors(g, proj)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    assert np.abs(u @ u.T - gn @ gn.T).max() < 0.12
    assert np.allclose(norms, np.linalg.norm(g, axis=1), rtol=1e-5)
    assert np.array_equal(proj, vectors.projection_matrix(600, 2048, seed=3))


def test_sample_vectors_reject_nan_gradients_naming_rows():
    g = np.ones((4, 3), np.float32)
    g[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"grads \(4, 3\) holds NaN or Inf in rows \[2\]"):
        vectors.sample_vectors(g, np.eye(3, dtype=np.float32))


def test_kmeans_c_and_reference_agree_and_find_the_blobs():
    x = blobs()
    a = kmeans.kmeans(x, 3, seed=1)
    b = kmeans.kmeans(x, 3, seed=1, backend="reference")
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.centroids, b.centroids, atol=1e-5)
    for i in range(3):  # each blob is one cluster
        assert np.unique(a.labels[20 * i:20 * (i + 1)]).size == 1
    assert np.unique(a.labels).size == 3


def test_choose_k_finds_the_number_of_blobs():
    x = blobs(centers=4, per=15)
    assert kmeans.choose_k(x, [1, 2, 3, 4, 5, 6, 8], seed=0)[0] == 4
    assert kmeans.choose_k(x, [2, 3, 4, 5, 6], seed=0, rule="silhouette")[0] == 4


def test_kmeans_rejects_k_above_samples_and_nan():
    with pytest.raises(ValueError, match=r"k = 5 clusters need at least k samples, x has 3 \(x is \(3, 2\)\)"):
        kmeans.kmeans(np.zeros((3, 2), np.float32), 5)
    x = np.zeros((4, 2), np.float32)
    x[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"x \(4, 2\) holds NaN or Inf in rows \[1\]"):
        kmeans.kmeans(x, 2)


def test_hist_entropy_prefers_spread_scores():
    rng = np.random.default_rng(0)
    spread, spiky = rng.normal(size=500), np.r_[np.zeros(495), np.full(5, 10.0)]
    assert selectors.hist_entropy(spread) > selectors.hist_entropy(spiky) + 1.0
    assert selectors.hist_entropy(np.full(9, 3.0)) == 0.0
    name, ent = selectors.choose_selector({"spiky": spiky, "spread": spread}, np.arange(500))
    assert name == "spread" and set(ent) == {"spiky", "spread"}


def test_allocate_conserves_and_caps_at_cluster_sizes():
    for sizes, b in [([3, 50, 50, 7], 40), ([10, 10, 10], 30), ([1, 1, 100], 60), ([5, 9, 2], 13)]:
        out = budget.allocate(np.array(sizes), b)
        assert out.sum() == b and (out <= np.array(sizes)).all(), (sizes, b, out)
    with pytest.raises(ValueError, match=r"budget 20 exceeds the pool: the clusters hold 9"):
        budget.allocate(np.array([4, 5]), 20)


def test_ccs_spreads_over_the_score_range_and_meets_the_budget():
    x = np.random.default_rng(0).exponential(size=1000)  # dense low scores, a sparse high tail
    idx = budget.ccs_sample(x, 100, np.random.default_rng(0))
    assert idx.size == 100 and np.unique(idx).size == 100
    assert (x[idx] > np.quantile(x, 0.8)).mean() > 0.3  # uniform sampling takes about 20% from the top fifth
    idx = budget.ccs_sample(x, 100, np.random.default_rng(0), fill=False)
    assert idx.size <= 100 and (x[idx] > np.sort(x)[50]).all() and (x[idx] <= np.sort(x)[950]).all()
    with pytest.raises(ValueError, match=r"budget 11 exceeds the pool: scores has 10 samples"):
        budget.ccs_sample(np.arange(10.0), 11, np.random.default_rng(0))


def test_prune_drops_duplicates_first_and_respects_the_bound():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 16)).astype(np.float32)
    v = np.concatenate([base, base[:10] + 1e-4])  # ten near-duplicates arriving later
    labels = np.zeros(40, dtype=np.int64)
    keep = prune.prune_pool(v, labels, bound=35, threshold=0.999)
    assert keep.tolist() == list(range(30))
    keep = prune.prune_pool(v, labels, bound=25)
    assert keep.size == 25 and not np.isin(np.arange(30, 40), keep).any()


def test_pool_stays_under_the_bound_over_fifty_tasks():
    rng = np.random.default_rng(0)
    cfg = AdaptInfConfig(k=4, pool_bound=60, dedup_threshold=0.95)
    pool = np.zeros((0, 12), np.float32)
    for t in range(50):
        new = rng.standard_normal((int(rng.integers(5, 30)), 12)).astype(np.float32)
        new = np.concatenate([new, new[:3]])  # every task repeats some of its examples
        pool = np.concatenate([pool, new / np.linalg.norm(new, axis=1, keepdims=True)])
        scores = {"loss": rng.random(len(pool)), "el2n": rng.random(len(pool))}
        sel = select_step(pool, scores, budget=min(10, len(pool)), seed=t, config=cfg)
        pool = pool[sel.keep]
        assert len(pool) <= 60, f"task {t}: pool {len(pool)}"
        assert len(sel.train) == min(10, len(sel.keep))


def test_select_step_is_deterministic_and_checks_its_inputs():
    x = blobs(per=30)
    s = {"loss": np.random.default_rng(1).random(90), "entropy": np.random.default_rng(2).random(90)}
    a = select_step(x, s, 20, seed=5, config=AdaptInfConfig(pool_bound=70, dedup_threshold=None))
    b = select_step(x, s, 20, seed=5, config=AdaptInfConfig(pool_bound=70, dedup_threshold=None))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.keep, b.keep) and a.k == b.k
    assert len(a.keep) == 70 and len(a.train) == 20
    with pytest.raises(ValueError, match=r"budget 91 exceeds the pool of 90 examples"):
        select_step(x, s, 91, seed=0)
    with pytest.raises(ValueError, match=r"k = 100 clusters need at least k samples, the pool has 90"):
        cluster_and_prune(x, 0, AdaptInfConfig(k=100))
    with pytest.raises(ValueError, match=r"scores\['loss'\] has shape \(5,\)"):
        select_step(x, {"loss": np.zeros(5)}, 3, seed=0, config=AdaptInfConfig(k=2))
    with pytest.raises(ValueError, match="exceeds the pool of 10 examples left after pruning|exceeds the pool of 10"):
        adapt_inf.sample_clusters(s, a.labels, a.keep[:10], a.k, 11, 0)
