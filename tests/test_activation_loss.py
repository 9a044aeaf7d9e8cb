"""ReLU and CrossEntropyLoss modules: values and gradients against NumPy, finite differences and torch."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.nn import CrossEntropyLoss, ReLU

from .conftest import assert_close, f32


def test_relu_forward_and_backward_match_numpy(rng):
    x = f32(rng, 5, 7)
    dy = f32(rng, 5, 7)
    relu = ReLU()
    y = relu(x)
    assert y.dtype == np.float32 and np.array_equal(y, np.maximum(x, 0))
    assert np.array_equal(relu.backward(dy), dy * (x > 0))


def test_relu_backward_rejects_wrong_shape_and_missing_forward(rng):
    with pytest.raises(RuntimeError, match="before forward"):
        ReLU().backward(f32(rng, 2, 2))
    relu = ReLU()
    relu(f32(rng, 2, 3))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        relu.backward(f32(rng, 3, 2))


def test_cross_entropy_loss_gradient_matches_torch(rng, torch):
    logits = f32(rng, 6, 4)
    labels = np.array([0, 3, -100, 1, 2, 3], dtype=np.int64)
    loss_fn = CrossEntropyLoss()
    loss = loss_fn(logits, labels)
    dlogits = loss_fn.backward(2.0)
    t = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(t, torch.tensor(labels), ignore_index=-100)
    (2.0 * tl).backward()
    assert_close(loss, tl.item(), rtol=1e-6, atol=1e-6, name="loss")
    assert_close(dlogits, t.grad.numpy(), rtol=1e-5, atol=1e-6, name="dlogits")
    assert np.all(dlogits[2] == 0.0)


def test_cross_entropy_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before forward"):
        CrossEntropyLoss().backward()
