"""The adaptive fusion stand-in: torch parity of its forward and every gradient, and the switchable student."""
from __future__ import annotations

import numpy as np

from peftc.distill.fusion import AdaptiveFusion, FusionStudent
from peftc.models import SmallResNet

from .conftest import assert_close, f32


def test_adaptive_fusion_matches_torch_forward_and_gradients(rng, torch):
    d, s = 6, 5
    f = AdaptiveFusion(d, memory_slots=s, seed=3)
    f.gate.weight.data[...] = f32(rng, 3, 3 * d, scale=0.3)  # non-equal gates, so every gate path is exercised
    f.norm.weight.data[...] = 1.0 + f32(rng, d, scale=0.2)
    x = f32(rng, 4, d, 3, 2)
    dy = f32(rng, 4, d)
    y = f.forward(x)
    dx = f.backward(dy)
    T = torch.tensor
    tx = T(x, requires_grad=True)
    w = {name: T(p.data.copy(), requires_grad=True) for name, p in f.named_parameters()}
    xf = tx.reshape(4, d, -1)
    h1 = xf.mean(2)
    a = torch.softmax(torch.einsum("ndp,d->np", xf, w["att"]), 1)
    h2 = torch.einsum("ndp,np->nd", xf, a)
    q = h1 @ w["query.weight"].T + w["query.bias"]
    r = torch.softmax(q @ w["memory"].T / d ** 0.5, 1) @ w["memory"]
    alpha = torch.softmax(torch.cat([h1, h2, r], 1) @ w["gate.weight"].T + w["gate.bias"], 1)
    u = h1 + alpha[:, :1] * h1 + alpha[:, 1:2] * h2 + alpha[:, 2:] * r
    ref = torch.nn.functional.layer_norm(u, (d,), w["norm.weight"], w["norm.bias"], eps=f.norm.eps)
    (ref * T(dy)).sum().backward()
    assert_close(y, ref.detach().numpy(), 1e-5, 1e-5, "out")
    assert_close(dx, tx.grad.numpy(), 1e-4, 1e-5, "dx")
    for name, p in f.named_parameters():
        assert_close(p.grad, w[name].grad.numpy(), 1e-4, 1e-5, f"d{name}")


def test_fusion_student_without_fusion_is_the_plain_cnn(rng):
    x = f32(rng, 3, 1, 28, 28)
    plain, switched = SmallResNet((4, 8), 5, seed=2), FusionStudent((4, 8), 5, seed=2, fusion=False)
    assert_close(switched.forward(x), plain.forward(x), 0, 0, "logits")
    with_fusion = FusionStudent((4, 8), 5, seed=2, fusion=True)
    n_plain = sum(p.size for p in plain.parameters())
    assert sum(p.size for p in with_fusion.parameters()) > n_plain


def test_fusion_student_input_gradient_matches_finite_differences(rng):
    s = FusionStudent((4, 8), 3, seed=1, fusion=True, memory_slots=4)
    s.eval()
    x = f32(rng, 2, 1, 12, 12)
    w = f32(rng, 2, 3)
    s.forward(x)
    dx = s.backward(w)
    for _ in range(3):
        v = rng.standard_normal(x.shape).astype(np.float32)
        eps = 2e-3  # small enough to cross few ReLU kinks, large enough for float32
        num = (float((s.forward(x + eps * v) * w).sum()) - float((s.forward(x - eps * v) * w).sum())) / (2 * eps)
        ana = float((dx.astype(np.float64) * v).sum())
        assert abs(num - ana) <= 0.03 * abs(ana) + 1e-3, (num, ana)


def test_adaptive_fusion_with_a_mask_is_the_fusion_of_each_rows_kept_positions(rng):
    d = 6
    f = AdaptiveFusion(d, memory_slots=5, seed=3)
    f.gate.weight.data[...] = f32(rng, 3, 3 * d, scale=0.3)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    x, dy = f32(rng, 3, d, 5), f32(rng, 3, d)
    f.zero_grad()
    y = f.forward(x, mask)
    dx = f.backward(dy)
    grads = {name: p.grad.copy() for name, p in f.named_parameters()}
    f.zero_grad()
    for i, n in enumerate(mask.sum(axis=1)):
        assert_close(y[i:i + 1], f.forward(np.ascontiguousarray(x[i:i + 1, :, :n])), 1e-5, 1e-6, f"row {i}")
        assert_close(dx[i:i + 1, :, :n], f.backward(dy[i:i + 1]), 1e-5, 1e-6, f"dx row {i}")
        assert not dx[i, :, n:].any()
    for name, p in f.named_parameters():
        assert_close(grads[name], p.grad, 1e-4, 1e-6, f"d{name}")
