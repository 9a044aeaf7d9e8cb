"""CNN layers in peftc.nn (Conv2d, BatchNorm2d, ReLU, pooling): a small network against torch.nn
in every batch-norm mode, and the module conventions (cache, accumulation, frozen parameters)."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import nn
from peftc.random import Generator

from .conftest import assert_close, f32


def small_cnn(seed: int = 0) -> list[nn.Module]:
    g = Generator(seed)
    return [nn.Conv2d(2, 4, 3, padding=1, generator=g), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False, generator=g), nn.BatchNorm2d(5), nn.ReLU(),
            nn.AvgPool2d(2, 1), nn.GlobalAvgPool2d()]


def torch_copy(torch, layers):
    tl = []
    for m in layers:
        if isinstance(m, nn.Conv2d):
            t = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                bias=m.bias is not None)
            t.weight.data = torch.tensor(m.weight.data.copy())
            if m.bias is not None:
                t.bias.data = torch.tensor(m.bias.data.copy())
        elif isinstance(m, nn.BatchNorm2d):
            t = torch.nn.BatchNorm2d(m.num_features, m.eps, m.momentum)
            t.weight.data = torch.tensor(m.weight.data.copy())
            t.bias.data = torch.tensor(m.bias.data.copy())
            t.running_mean.copy_(torch.tensor(m.running_mean))
            t.running_var.copy_(torch.tensor(m.running_var))
        elif isinstance(m, nn.ReLU):
            t = torch.nn.ReLU()
        elif isinstance(m, nn.MaxPool2d):
            t = torch.nn.MaxPool2d(m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.AvgPool2d):
            t = torch.nn.AvgPool2d(m.kernel_size, m.stride, m.padding)
        else:
            t = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        tl.append(t)
    return torch.nn.Sequential(*tl)


def run(layers, x, dy):
    for m in layers:
        x = m.forward(x)
    y = x
    for m in reversed(layers):
        dy = m.backward(dy)
    return y, dy


def perturb_bn(layers, rng):
    for m in layers:
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[...] = 1.0 + 0.3 * f32(rng, m.num_features)
            m.bias.data[...] = 0.3 * f32(rng, m.num_features)
            m.running_mean[...] = 0.2 * f32(rng, m.num_features)
            m.running_var[...] = 0.5 + np.abs(f32(rng, m.num_features))


@pytest.mark.parametrize("mode", ["train", "eval", "test_batch"])
def test_small_cnn_matches_torch_in_every_batchnorm_mode(rng, torch, mode):
    layers = small_cnn()
    perturb_bn(layers, rng)
    tmodel = torch_copy(torch, layers)
    for m in layers:
        if isinstance(m, nn.BatchNorm2d):
            m.mode = mode
    if mode == "test_batch":  # what TENT does to torch's BN layers
        for t in tmodel:
            if isinstance(t, torch.nn.BatchNorm2d):
                t.track_running_stats, t.running_mean, t.running_var = False, None, None
    tmodel.train(mode != "eval")
    x = f32(rng, 6, 2, 8, 8)
    dy = f32(rng, 6, 5)
    y, dx = run(layers, x, dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = tmodel(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, xt.grad.numpy(), 1e-4, 1e-5, "dx")
    for m, t in zip(layers, tmodel):
        for name, p in m.named_parameters():
            assert_close(p.grad, getattr(t, name).grad.numpy(), 1e-4, 1e-5, f"{type(m).__name__}.{name}")
        if isinstance(m, nn.BatchNorm2d) and mode != "test_batch":
            assert_close(m.running_mean, t.running_mean.numpy(), 1e-6, 1e-6, "running_mean")
            assert_close(m.running_var, t.running_var.numpy(), 1e-5, 1e-6, "running_var")


def test_batchnorm2d_test_batch_mode_leaves_running_stats_and_trains_only_affine(rng):
    bn = nn.BatchNorm2d(3)
    bn.running_mean[...] = 0.5
    bn.mode = "test_batch"
    bn.train()  # a later model.train() keeps the batch statistics without updates
    assert bn.mode == "test_batch"
    x = f32(rng, 4, 3, 5, 5) + 2.0
    y = bn.forward(x)
    assert_close(y.mean(axis=(0, 2, 3)), np.zeros(3), 0, 1e-5, "batch-normalised mean")
    np.testing.assert_array_equal(bn.running_mean, np.full(3, 0.5, np.float32))
    np.testing.assert_array_equal(bn.running_var, np.ones(3, np.float32))
    assert bn.num_batches_tracked == 0
    bn.backward(f32(rng, *x.shape))
    assert bn.weight.grad is not None and bn.bias.grad is not None
    bn.mode = "eval"
    assert not bn.training and bn.mode == "eval"
    assert_close(bn.forward(x), (x - 0.5) / np.sqrt(1.0 + bn.eps), 1e-6, 1e-6, "eval uses running stats")


def test_frozen_conv_and_bn_still_return_dx_and_allocate_no_grads(rng):
    layers = small_cnn()
    for m in layers:
        m.requires_grad_(False)
    x = f32(rng, 3, 2, 8, 8)
    _, dx = run(layers, x, f32(rng, 3, 5))
    assert dx.shape == x.shape and np.abs(dx).sum() > 0
    assert all(p.grad is None for m in layers for p in m.parameters())


def test_conv2d_backward_accumulates_across_calls(rng):
    conv = nn.Conv2d(2, 3, 3, padding=1, generator=Generator(1))
    x, dy = f32(rng, 2, 2, 5, 5), f32(rng, 2, 3, 5, 5)
    conv.forward(x)
    conv.backward(dy)
    once = conv.weight.grad.copy()
    conv.forward(x)
    conv.backward(dy)
    assert_close(conv.weight.grad, 2 * once, 1e-6, 1e-6, "accumulated dweight")


def test_conv2d_from_weights_uses_arrays_in_place_and_handles_new_shapes(rng):
    w, b = f32(rng, 3, 2, 3, 3), f32(rng, 3)
    conv = nn.Conv2d.from_weights(w, b, stride=1, padding=1)
    assert conv.weight.data is w
    assert conv.forward(f32(rng, 2, 2, 6, 6)).shape == (2, 3, 6, 6)
    assert conv.forward(f32(rng, 1, 2, 9, 7)).shape == (1, 3, 9, 7)  # the scratch grows as needed
    with pytest.raises(ValueError, match="IC"):
        conv.forward(f32(rng, 1, 4, 6, 6))


def test_conv2d_init_matches_torch_bounds():
    conv = nn.Conv2d(4, 6, 3, generator=Generator(3))
    bound = 1.0 / np.sqrt(4 * 9)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.bias.data).max() <= bound
    assert np.abs(conv.weight.data).max() > 0.8 * bound


def test_batchnorm2d_from_weights_and_invalid_mode():
    bn = nn.BatchNorm2d.from_weights(np.ones(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32),
                                     np.ones(2, np.float32))
    assert [n for n, _ in bn.named_buffers()] == ["running_mean", "running_var"]
    with pytest.raises(ValueError, match="mode"):
        bn.mode = "adapt"


def test_running_statistics_travel_through_state_dict():
    from peftc.nn import BatchNorm2d, Conv2d, Module

    class Net(Module):
        def __init__(self):
            self.conv = Conv2d(1, 2, 3)
            self.bn = BatchNorm2d(2)

    a, b = Net(), Net()
    a.bn.running_mean[...] = [0.5, -1.0]
    a.bn.running_var[...] = [2.0, 3.0]
    state = a.state_dict()
    assert "bn.running_mean" in state and "bn.running_var" in state
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.bn.running_mean, [0.5, -1.0])
    np.testing.assert_array_equal(b.bn.running_var, [2.0, 3.0])


def test_small_resnet_without_input_grad_gives_the_same_parameter_gradients_and_skips_the_stem(rng):
    from peftc.models import SmallResNet

    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    dy = f32(rng, 4, 5)
    grads = []
    for input_grad in (True, False):
        model = SmallResNet((3, 6), num_classes=5, seed=1)
        for _, bn in model.batchnorms():
            bn.mode = "test_batch"
        model.requires_grad_(False)
        for _, bn in model.batchnorms():
            bn.weight.requires_grad = bn.bias.requires_grad = True
        model.forward(x)
        if not input_grad:  # a stem convolution asked for its input gradient would fail here
            model.stem_conv._x = None
        dx = model.backward(dy, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append({n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "stem_bn.weight" in grads[1]
    for name, g in grads[0].items():
        assert np.array_equal(g, grads[1][name]), name


def test_conv2d_and_batchnorm2d_backward_without_input_grad_still_accumulate_parameter_grads(rng):
    conv = nn.Conv2d(2, 3, 3, padding=1, generator=Generator(0))
    bn = nn.BatchNorm2d(3)
    x, dy = f32(rng, 2, 2, 5, 5), f32(rng, 2, 3, 5, 5)
    bn.forward(conv.forward(x))
    d = bn.backward(dy)
    full_g = bn.weight.grad.copy()
    assert bn.backward(dy, input_grad=False) is None
    assert_close(bn.weight.grad, 2 * full_g, 1e-6, 1e-6, "dgamma accumulates without dx")
    conv.backward(d)
    full_w = conv.weight.grad.copy()
    assert conv.backward(d, input_grad=False) is None
    assert_close(conv.weight.grad, 2 * full_w, 1e-6, 1e-6, "dweight accumulates without dx")
    conv.requires_grad_(False)
    assert conv.backward(d, input_grad=False) is None  # nothing to compute at all


@pytest.mark.parametrize("mode", ["train", "test_batch", "eval"])
def test_batchnorm_relu2d_equals_batchnorm2d_then_relu_and_keeps_its_parameter_names(rng, mode):
    fused, plain, relu = nn.BatchNormReLU2d(3), nn.BatchNorm2d(3), nn.ReLU()
    for bn in (fused, plain):
        bn.load_state_dict({"weight": np.full(3, 1.5, np.float32), "bias": np.array([0.1, -0.2, 0.3], np.float32),
                            "running_mean": np.full(3, 0.2, np.float32), "running_var": np.full(3, 2.0, np.float32)})
        bn.mode = mode
    assert isinstance(fused, nn.BatchNorm2d) and fused.state_dict().keys() == plain.state_dict().keys()
    x, dy = f32(rng, 4, 3, 5, 5), f32(rng, 4, 3, 5, 5)
    y = fused.forward(x)
    np.testing.assert_array_equal(y, relu.forward(plain.forward(x)))
    np.testing.assert_array_equal(fused.running_var, plain.running_var)
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(relu.backward(dy)))
    np.testing.assert_array_equal(fused.weight.grad, plain.weight.grad)
    np.testing.assert_array_equal(fused.bias.grad, plain.bias.grad)


def test_conv2d_backward_adds_into_a_given_input_gradient(rng):
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, generator=Generator(0))
    x = f32(rng, 2, 2, 7, 7)
    dy = f32(rng, *conv.forward(x).shape)
    fresh = conv.backward(dy)
    base = f32(rng, *x.shape)
    out = base.copy()
    assert conv.backward(dy, dx=out) is out
    assert_close(out, base + fresh, 1e-6, 1e-6, "dx accumulated")
    with pytest.raises(ValueError, match="dx"):
        conv.backward(dy, dx=np.zeros((2, 2, 6, 6), np.float32))


def test_batchnorm2d_backward_with_relu_out_masks_dy_by_a_downstream_relu(rng):
    """relu_out = relu(bn(x) + s): the norm's gradient is the ReLU backward's, with no pass of its own."""
    fused, plain, relu = nn.BatchNorm2d(3), nn.BatchNorm2d(3), nn.ReLU()
    for bn in (fused, plain):
        bn.mode = "test_batch"
    x, s, dy = f32(rng, 4, 3, 5, 5), f32(rng, 4, 3, 5, 5), f32(rng, 4, 3, 5, 5)
    out = relu.forward(fused.forward(x) + s)
    plain.forward(x)
    fused.relu_out = out
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(relu.backward(dy)))
    np.testing.assert_array_equal(fused.weight.grad, plain.weight.grad)
    np.testing.assert_array_equal(fused.bias.grad, plain.bias.grad)


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (3, 5, 2)])
def test_basic_block_gradients_match_finite_differences(rng, cin, cout, stride):
    """Both shortcuts (identity, and conv1x1-BN whose norms mask by the block's ReLU output themselves)."""
    from peftc.models.cnn import BasicBlock

    block = BasicBlock(cin, cout, stride, Generator(1))
    for _, m in block.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.mode = "test_batch"
    x = f32(rng, 3, cin, 6, 6)
    dy = f32(rng, *block.forward(x).shape)
    block.zero_grad()
    block.forward(x)
    dx = block.backward(dy)
    eps, idx = 1e-2, [(0, 0, 1, 2), (2, cin - 1, 5, 0), (1, 1, 3, 3)]
    for i in idx:
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num = float(((block.forward(xp).astype(np.float64) - block.forward(xm)) * dy).sum()) / (2 * eps)
        assert abs(num - dx[i]) < 2e-2 * max(1.0, abs(num)), (i, num, dx[i])
