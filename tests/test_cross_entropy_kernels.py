"""Cross-entropy kernels: mean over counted rows, ignore_index, against reference, finite
differences and torch.nn.functional.cross_entropy."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

N, C = 7, 5
LABELS = np.array([0, 4, -100, 2, 2, -100, 1], dtype=np.int64)


def labels_ignoring(ignore_index: int) -> np.ndarray:
    """LABELS with the ignored rows marked by ignore_index (rows already equal to it are ignored too)."""
    return np.where(LABELS == -100, ignore_index, LABELS)


def test_cross_entropy_forward_matches_reference(rng):
    logits = f32(rng, N, C, scale=3.0)
    loss, count, probs = F.cross_entropy_forward(logits, LABELS)
    loss_ref, count_ref, probs_ref = R.cross_entropy_forward(logits.astype(np.float64), LABELS)
    assert count == count_ref == 5
    assert_close(loss, loss_ref, 1e-6, 1e-6, "loss")
    assert_close(probs, probs_ref, 1e-6, 1e-7, "probs")
    assert_close(probs.sum(axis=1), np.ones(N), 1e-6, 0, "row sums")


def test_cross_entropy_backward_matches_reference_and_accumulates(rng):
    logits, dl0 = f32(rng, N, C), f32(rng, N, C)
    _, _, probs = F.cross_entropy_forward(logits, LABELS)
    dlogits, want = dl0.copy(), dl0.astype(np.float64)
    F.cross_entropy_backward(0.8, probs, LABELS, dlogits=dlogits)
    R.cross_entropy_backward(0.8, probs.astype(np.float64), LABELS, dlogits=want)
    assert_close(dlogits, want, 1e-6, 1e-6, "dlogits")
    assert np.array_equal(dlogits[LABELS == -100], dl0[LABELS == -100])


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_backward_matches_finite_differences(rng, ignore_index):
    logits = f32(rng, N, C, scale=2.0)
    logits64 = logits.astype(np.float64)
    dloss = 1.7

    labels = labels_ignoring(ignore_index)

    def loss():
        return dloss * R.cross_entropy_forward(logits64, labels, ignore_index)[0]

    _, _, probs = F.cross_entropy_forward(logits, labels, ignore_index)
    dlogits = np.zeros_like(logits)
    F.cross_entropy_backward(dloss, probs, labels, ignore_index, dlogits=dlogits)
    assert_close(dlogits, numerical_grad(loss, logits64), 1e-4, 1e-5, "dlogits")


def test_cross_entropy_all_rows_ignored_gives_zero_loss_and_no_gradient(rng):
    logits = f32(rng, 3, C)
    labels = np.full(3, -100, dtype=np.int64)
    loss, count, _ = F.cross_entropy_forward(logits, labels)
    assert (loss, count) == (0.0, 0)
    dlogits = f32(rng, 3, C)
    before = dlogits.copy()
    F.cross_entropy_backward(1.0, np.full_like(logits, 0.2), labels, dlogits=dlogits)
    assert np.array_equal(dlogits, before)
    assert R.cross_entropy_forward(logits, labels)[:2] == (0.0, 0)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-3e4, 3e4, 3e4 - 1.0]], dtype=np.float32)
    labels = np.array([1, 2], dtype=np.int64)
    loss, count, probs = F.cross_entropy_forward(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(probs))
    assert_close(loss, (1e4 + 1.0 + np.log1p(np.exp(-1.0))) / 2, 1e-6, 1e-3, "loss")


def test_cross_entropy_with_no_rows_is_zero():
    loss, count, probs = F.cross_entropy_forward(np.zeros((0, C), np.float32), np.zeros(0, np.int64))
    assert (loss, count, probs.shape) == (0.0, 0, (0, C))


@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_cross_entropy_matches_torch(rng, torch, ignore_index):
    logits, labels = f32(rng, N, C, scale=2.0), labels_ignoring(ignore_index)
    loss, _, probs = F.cross_entropy_forward(logits, labels, ignore_index)
    dlogits = np.zeros_like(logits)
    F.cross_entropy_backward(0.6, probs, labels, ignore_index, dlogits=dlogits)
    lt = torch.tensor(logits, requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(lt, torch.tensor(labels), ignore_index=ignore_index)
    (0.6 * loss_t).backward()
    assert_close(loss, loss_t.item(), 1e-6, 1e-6, "loss")
    assert_close(dlogits, lt.grad.numpy(), 1e-5, 1e-7, "dlogits")


def _many_classes(rng, classes: int) -> tuple[np.ndarray, np.ndarray]:
    # the vectorised row passes: 16 lanes, then a tail; the largest logit sits in the tail in one row and in
    # the lanes in another, and one row holds logits 100 below its top (their probability is exactly 0)
    logits = f32(rng, 6, classes, scale=3.0)
    logits[0, -1] = 200.0  # the softmax shift must be this one: exp(200 - a smaller max) would overflow
    logits[1, 3] = 200.0
    logits[2, : classes // 2] -= 100.0
    return logits, np.array([0, classes - 1, 1, -100, 5, classes // 2], dtype=np.int64)


@pytest.mark.parametrize("classes", [16, 37, 300])
def test_cross_entropy_over_many_classes_matches_reference(rng, classes):
    logits, labels = _many_classes(rng, classes)
    loss, count, probs = F.cross_entropy_forward(logits, labels)
    loss_ref, _, probs_ref = R.cross_entropy_forward(logits.astype(np.float64), labels)
    assert count == 5
    assert_close(loss, loss_ref, 1e-6, 1e-6, "loss")
    assert_close(probs, probs_ref, 1e-6, 1e-7, "probs")
    assert np.all(probs[2, : classes // 2] == 0.0)


def test_cross_entropy_over_many_classes_matches_torch(rng, torch):
    logits, labels = _many_classes(rng, 300)
    loss, _, _ = F.cross_entropy_forward(logits, labels)
    lt = torch.tensor(logits)
    assert_close(loss, torch.nn.functional.cross_entropy(lt, torch.tensor(labels)).item(), 1e-6, 1e-6, "torch")


def test_cross_entropy_refuses_nan_and_inf_logits_but_takes_masked_ones(rng):
    logits = f32(rng, 3, 37)  # two blocks of 16 lanes and a tail of 5
    labels = np.array([0, 5, 36], dtype=np.int64)
    for where, value in [(0, np.nan), (20, np.inf), (36, np.nan), (35, np.inf)]:
        bad = logits.copy()
        bad[1, where] = value
        with pytest.raises(ValueError, match="cross_entropy_forward: input holds NaN or Inf"):
            F.cross_entropy_forward(bad, labels)
    every = logits.copy()
    every[2] = -np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        F.cross_entropy_forward(every, labels)
    masked = logits.copy()
    masked[:, 10:30] = -np.inf  # masked classes: probability 0, the rest a softmax
    loss, _, probs = F.cross_entropy_forward(masked, labels)
    assert np.isfinite(loss) and np.all(probs[:, 10:30] == 0.0)
    assert_close(probs.sum(axis=1), np.ones(3), 1e-6, 0, "row sums")
