"""Several layers' incremental-PCA updates side by side (ipca_update_many, partial_fit_many): the same
bits as one update at a time, on any thread count; bad jobs are refused or reported by name."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peftc import functional as F
from peftc.tuners.incremental_pca import IncrementalPCA, partial_fit_many

ROOT = Path(__file__).resolve().parent.parent
# (rows per batch, features, components): wide (rows < IC) and tall Gram matrices, uneven sizes
LAYERS = [(40, 24, 4), (60, 32, 6), (30, 16, 3), (90, 48, 8), (20, 64, 5)]


def _batches(seed: int, n: int = 3) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal((m, ic)) * np.linspace(3.0, 0.1, ic)).astype(np.float32) for m, ic, _ in LAYERS]
            for _ in range(n)]


def _state(p: IncrementalPCA) -> list[np.ndarray]:
    return [p.components_, p.singular_values_, p.mean_, p.var_, p.explained_variance_ratio_, p.cosine_]


def test_many_updates_give_the_bits_of_one_update_at_a_time():
    alone = [IncrementalPCA(k, ic) for _, ic, k in LAYERS]
    together = [IncrementalPCA(k, ic) for _, ic, k in LAYERS]
    for batch in _batches(0):  # the first batch is each PCA's first update
        for p, x in zip(alone, batch):
            p.partial_fit(x)
        partial_fit_many(together, batch)
        for a, b in zip(alone, together):
            assert a.n_samples_seen_ == b.n_samples_seen_
            for u, v in zip(_state(a), _state(b)):
                assert np.array_equal(u, v)
    assert all(np.all(p.cosine_ != 0) for p in together)  # later updates were compared with earlier ones


SCRIPT = r"""
import sys
import numpy as np
from peftc.tuners.incremental_pca import IncrementalPCA, partial_fit_many
sys.path.insert(0, "tests")
from test_ipca_many import LAYERS, _batches, _state
pcas = [IncrementalPCA(k, ic) for _, ic, k in LAYERS]
one = IncrementalPCA(8, 48)
for batch in _batches(1):
    partial_fit_many(pcas, batch)
    one.partial_fit(batch[3])
np.savez(sys.argv[1], *[a for p in pcas + [one] for a in _state(p)])
"""


def _run(threads: int, out: Path) -> list[np.ndarray]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, check=True, cwd=ROOT)
    with np.load(out) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def test_updates_give_identical_bits_on_one_and_two_threads(tmp_path):
    one, two = _run(1, tmp_path / "one.npz"), _run(2, tmp_path / "two.npz")
    assert len(one) == len(two) == 6 * (len(LAYERS) + 1)
    for i, (a, b) in enumerate(zip(one, two)):
        assert np.array_equal(a, b), f"array {i} differs between 1 and 2 threads"


def test_a_failing_job_is_named_and_leaves_its_state_while_the_others_update():
    pcas = [IncrementalPCA(k, ic) for _, ic, k in LAYERS]
    first = _batches(2, 1)[0]
    partial_fit_many(pcas, first)
    before = [[a.copy() for a in _state(p)] for p in pcas]
    batch = [x.copy() for x in _batches(3, 1)[0]]
    batch[2][5, 1] = np.nan
    with pytest.raises(ValueError, match=r"layer two: 'x' \(30, 16\) holds NaN or Inf"):
        partial_fit_many(pcas, batch, labels=["layer zero", "layer one", "layer two", "layer three", "layer four"])
    assert pcas[2].n_samples_seen_ == 30 and pcas[0].n_samples_seen_ == 80
    assert all(np.array_equal(a, b) for a, b in zip(_state(pcas[2]), before[2]))
    assert not np.array_equal(pcas[0].mean_, before[0][2])


def _job(p: IncrementalPCA, x: np.ndarray) -> tuple:
    return (p.components_, p.singular_values_, p.mean_, p.var_, p.explained_variance_ratio_, p.cosine_,
            np.empty(F.ipca_workspace_size(x.shape[0], p.n_features, p.n_components), np.float32), x,
            p.n_samples_seen_)


def test_jobs_that_share_written_memory_are_refused_before_anything_runs():
    a, b = IncrementalPCA(4, 24), IncrementalPCA(4, 24)
    x = _batches(4, 1)[0][0]
    job_a, job_b = list(_job(a, x)), list(_job(b, x))
    job_b[2] = a.mean_  # b would write a's mean
    with pytest.raises(ValueError, match=r"'mean' of jobs\[1\] and 'mean' of jobs\[0\] overlap"):
        F.ipca_update_many([tuple(job_a), tuple(job_b)])
    assert a.n_samples_seen_ == 0 and not np.any(a.mean_)
    job_b[2] = b.mean_
    job_b[5] = job_a[6][:4]  # b's cosine inside a's scratch
    with pytest.raises(ValueError, match="overlap in memory"):
        F.ipca_update_many([tuple(job_a), tuple(job_b)])
    assert F.ipca_update_many([tuple(job_a), _job(b, x)]) == [None, None]  # both read the same x: allowed


def test_bad_jobs_raise_naming_the_job():
    p = IncrementalPCA(4, 24)
    x = _batches(5, 1)[0][0]
    with pytest.raises(TypeError, match=r"jobs\[1\] must be a tuple"):
        F.ipca_update_many([_job(p, x), [1, 2]])
    small = x[:3]
    with pytest.raises(ValueError, match=r"jobs\[0\]: 'x' has M=3 rows, too few for K=4"):
        F.ipca_update_many([_job(p, small)])
    with pytest.raises(ValueError, match="a PCA appears twice"):
        partial_fit_many([p, p], [x, x])
    assert F.ipca_update_many([]) == []
