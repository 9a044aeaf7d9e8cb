"""TTA methods on a tiny BatchNorm ResNet: each runs, TENT lowers entropy, EATA selects by the
threshold, reset restores the initial state exactly, SAR recovers, the open-set filter masks."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from peftc import functional as F
from peftc.models import SmallResNet
from peftc.tta import EATA, SAR, TENT, BNAdapt, Source, configure_for_tta
from peftc.tta.methods import diversity_backward

from .conftest import assert_close, numerical_grad


@pytest.fixture(scope="module")
def tiny():
    """A tiny model whose running statistics do not match the shifted test batch."""
    model = SmallResNet((4, 8), num_classes=10, seed=0)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(3):
        model.forward(rng.random((16, 1, 28, 28), dtype=np.float32))
    model.eval()
    x = (rng.random((16, 1, 28, 28), dtype=np.float32) * 0.3 + 0.6).astype(np.float32)
    return model, x


def hand_built_fisher(method, batches) -> list[np.ndarray]:
    """EATA's diagonal Fisher built by hand on a copy of the method's model: per batch, the gradient of the
    batch-mean cross-entropy against the argmax pseudo-labels, squared; the mean over the batches."""
    twin = copy.deepcopy(method.model)
    names = {id(p): n for n, p in method.model.named_parameters()}
    tw = dict(twin.named_parameters())
    trained = [tw[names[id(p)]] for p in method.params]
    total = [np.zeros(p.data.shape) for p in trained]
    for batch in batches:
        twin.zero_grad()
        logits = twin.forward(batch).astype(np.float64)
        d = np.exp(logits - logits.max(1, keepdims=True))
        d /= d.sum(1, keepdims=True)
        d[np.arange(len(d)), logits.argmax(1)] -= 1.0  # softmax minus the one-hot pseudo-label
        twin.backward((d / len(d)).astype(np.float32))
        for t, p in zip(total, trained):
            t += p.grad.astype(np.float64) ** 2
    return [t / len(batches) for t in total]


def assert_fisher_matches(method, batches) -> None:
    want = hand_built_fisher(method, batches)
    scale = max(float(w.max()) for w in want)
    assert scale > 0
    for i, (f, w, p) in enumerate(zip(method.fisher, want, method.params)):
        assert f.shape == p.shape
        assert_close(f, w, 1e-3, 1e-6 * scale, f"fisher of trained parameter {i}")


def _mean_entropy(method, x):
    return float(F.softmax_entropy_forward(method.model.forward(x))[0].mean())


@pytest.mark.parametrize("cls", [Source, BNAdapt, TENT, EATA, SAR])
def test_every_method_returns_logits_and_counts_the_batch(tiny, cls):
    model, x = tiny
    kwargs = {"e0_factor": 1.0} if cls in (EATA, SAR) else {}
    m = cls(model, **kwargs)
    out = m.forward_and_adapt(x)
    assert out.shape == (16, 10) and np.isfinite(out).all()
    assert m.stats["batches"] == 1 and m.stats["samples"] == 16


def test_methods_leave_the_given_model_untouched(tiny):
    model, x = tiny
    before = {k: v.copy() for k, v in model.state_dict().items()}
    TENT(model, lr=1e-2).forward_and_adapt(x)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_bn_adapt_differs_from_source_on_shifted_batch(tiny):
    model, x = tiny
    assert not np.allclose(Source(model).forward_and_adapt(x), BNAdapt(model).forward_and_adapt(x))


def test_tent_reduces_entropy_on_shifted_batch(tiny):
    model, x = tiny
    tent = TENT(model, lr=1e-2)
    before = _mean_entropy(tent, x)
    for _ in range(5):
        tent.forward_and_adapt(x)
    assert _mean_entropy(tent, x) < before - 1e-3
    assert tent.stats["steps"] == 5 and tent.stats["backward_samples"] == 80


def test_tent_updates_only_batchnorm_affine_parameters(tiny):
    model, x = tiny
    tent = TENT(model, lr=1e-2)
    before = {k: v.copy() for k, v in tent.model.state_dict().items()}
    tent.forward_and_adapt(x)
    changed = {k for k, v in tent.model.state_dict().items() if not np.array_equal(before[k], v)}
    assert changed and all(("bn" in k) and k.endswith(("weight", "bias")) for k in changed), changed


@pytest.mark.parametrize("cls", [TENT, EATA, SAR])
def test_reset_restores_the_initial_state_exactly(tiny, cls):
    model, x = tiny
    kwargs = {"e0_factor": 1.0, "lr": 1e-2} if cls in (EATA, SAR) else {"lr": 1e-2}
    m = cls(model, **kwargs)
    initial = {k: v.copy() for k, v in m.model.state_dict().items()}
    first = m.forward_and_adapt(x)
    m.forward_and_adapt(x)
    assert any(not np.array_equal(initial[k], v) for k, v in m.model.state_dict().items())
    m.reset()
    assert all(np.array_equal(initial[k], v) for k, v in m.model.state_dict().items())
    assert np.array_equal(m.forward_and_adapt(x), first)


def test_eata_adapts_on_exactly_the_samples_below_the_threshold(tiny):
    model, x = tiny
    eata = EATA(model, e0_factor=1.0)
    ent = F.softmax_entropy_forward(eata.model.forward(x))[0]
    eata.forward_and_adapt(x)
    expected = int((ent < math.log(10)).sum())
    assert 0 < expected and eata.stats["reliable"] == expected
    assert eata.stats["backward_samples"] == expected  # first batch: no redundancy filter yet
    strict = EATA(model, e0_factor=1e-6)
    strict.forward_and_adapt(x)
    assert strict.stats["steps"] == 0 and strict.stats["backward_samples"] == 0


def test_eata_fisher_penalty_pulls_towards_source_weights(tiny):
    model, x = tiny
    rng = np.random.default_rng(1)
    clean = rng.random((32, 1, 28, 28), dtype=np.float32)
    # d_margin above 1: the same batch repeated is never redundant, so every batch takes a step
    plain = EATA(model, e0_factor=1.0, d_margin=1.01, lr=0.05, optimizer="sgd", momentum=0.0)
    anchored = EATA(model, fisher_images=clean, e0_factor=1.0, d_margin=1.01, lr=0.05, optimizer="sgd",
                    momentum=0.0, fisher_alpha=50.0, fisher_batch_size=16)
    assert_fisher_matches(anchored, [clean[:16], clean[16:]])
    for m in (plain, anchored):
        for _ in range(3):
            m.forward_and_adapt(x)
    drift = [sum(float(np.abs(p.data - t).sum()) for p, t in zip(m.params, m.theta0)) for m in (plain, anchored)]
    assert plain.stats["steps"] == anchored.stats["steps"] == 3
    assert drift[1] < drift[0], drift


def test_sar_excludes_the_top_block_and_counts_two_backwards(tiny):
    model, x = tiny
    sar = SAR(model, e0_factor=1.0, lr=1e-2)
    names = {id(p) for n, p in sar.model.named_parameters() if n.startswith("blocks.0")}
    assert not any(id(p) in names for p in sar.params)
    ent = F.softmax_entropy_forward(sar.model.forward(x))[0]
    sar.forward_and_adapt(x)
    n1 = int((ent < sar.e0).sum())
    assert 0 < n1 and sar.stats["steps"] == 1
    assert n1 < sar.stats["backward_samples"] <= 2 * n1  # the first backward's n1 and the re-filtered second's


def test_sar_step_matches_a_hand_built_sharpness_aware_step(tiny):
    """One SAR step: gradient at w + rho g/|g| over the samples both entropy filters keep, weights
    restored to w, then the optimizer step with that gradient (SGD, lr 1: the update is minus it)."""
    model, x = tiny
    rho = 0.5  # large enough that the perturbed-point gradient differs well beyond the tolerance
    sar = SAR(model, e0_factor=1.0, optimizer="sgd", lr=1.0, momentum=0.0, rho=rho, reset_below=0.0)
    # an entropy bound between the batch's entropies, so that the filter drops samples
    sar.e0 = float(np.median(F.softmax_entropy_forward(sar.model.forward(x))[0]))
    twin = copy.deepcopy(sar.model)
    names = {id(p): n for n, p in sar.model.named_parameters()}
    tw = dict(twin.named_parameters())
    trained = [tw[names[id(p)]] for p in sar.params]

    def entropy_grads(sel):
        twin.zero_grad()
        logits = twin.forward(x)
        ent, probs = F.softmax_entropy_forward(logits)
        sel = sel & (ent < sar.e0)
        dlogits = np.zeros_like(logits)
        dent = np.where(sel, 1.0 / sel.sum(), 0.0).astype(np.float32)
        F.softmax_entropy_backward(dent, probs, logits, dlogits=dlogits)
        twin.backward(dlogits)
        return sel, [p.grad.astype(np.float64) for p in trained]

    w0 = [p.data.copy() for p in trained]
    sel1, g1 = entropy_grads(np.ones(len(x), dtype=bool))
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in g1))
    for p, g in zip(trained, g1):
        p.data += (rho / norm * g).astype(np.float32)
    sel2, g2 = entropy_grads(sel1)
    assert 0 < sel2.sum() and sel1.sum() < len(x)

    before = [p.data.copy() for p in sar.params]
    assert all(np.array_equal(b, w) for b, w in zip(before, w0))
    sar.forward_and_adapt(x)
    # the check can tell the perturbed-point gradient from the gradient at w
    assert max(float(np.abs(a - b).max()) for a, b in zip(g1, g2)) > 1e-4
    for p, b, g in zip(sar.params, before, g2):
        assert_close(b - p.data, g, rtol=1e-3, atol=1e-6, name=names[id(p)])
    assert sar.stats["steps"] == 1 and sar.stats["backward_samples"] == int(sel1.sum() + sel2.sum())


def test_sar_recovers_when_the_loss_average_falls_below_the_bound(tiny):
    model, x = tiny
    sar = SAR(model, e0_factor=1.0, lr=1e-2, reset_below=1e9)
    initial = {k: v.copy() for k, v in sar.model.state_dict().items()}
    sar.forward_and_adapt(x)
    assert sar.stats["recoveries"] == 1 and sar.loss_ema is None
    assert all(np.array_equal(initial[k], v) for k, v in sar.model.state_dict().items())


def test_open_set_filter_keeps_all_samples_before_any_update(tiny):
    model, x = tiny
    tent = TENT(model, lr=1e-2, open_set=True, diversity_weight=0.0)
    tent.forward_and_adapt(x)  # adapted == frozen at the first batch: p_a(c_o) == p_o(c_o)
    assert tent.stats["backward_samples"] == 16
    probs = F.softmax_entropy_forward(tent.model.forward(x))[1]
    keep = tent._keep_mask(x, probs)
    assert keep.dtype == bool and keep.shape == (16,)


@pytest.fixture(scope="module")
def varied(tiny):
    """The tiny model with a head that predicts different classes for the rows of the shifted batch (the random
    model alone predicts one class for all of them): the head scaled by 10, its bias centred on the batch."""
    model, x = tiny
    model = copy.deepcopy(model)
    model.head.weight.data *= 10.0
    probe = copy.deepcopy(model)
    configure_for_tta(probe)
    model.head.bias.data -= probe.forward(x).mean(0)
    return model, x


def test_open_set_filter_keeps_exactly_the_samples_whose_original_class_gained_probability(varied):
    """After one update, the filter keeps sample i iff p_adapted(c_o) >= p_original(c_o), c_o the original model's
    class, the original being the configured model at construction (never updated). A reversed comparison keeps
    the complement; comparing against the adapted model (no frozen copy, or one that follows the updates) keeps
    every sample. Both change the kept set, which is checked as the mask and as the next step's backward count."""
    model, x = varied
    tent = TENT(model, optimizer="sgd", lr=0.1, momentum=0.0, open_set=True, diversity_weight=0.0)
    original = copy.deepcopy(tent.model)
    tent.forward_and_adapt(x)
    p_a = F.softmax_entropy_forward(tent.model.forward(x))[1]
    p_o = F.softmax_entropy_forward(original.forward(x))[1]
    rows, c_o = np.arange(len(x)), p_o.argmax(1)
    assert len(set(c_o)) > 3  # the original model predicts several classes
    want = p_a[rows, c_o] >= p_o[rows, c_o]
    assert 0 < want.sum() < len(x)
    assert np.abs(p_a[rows, c_o] - p_o[rows, c_o]).min() > 1e-5  # no near-tie that float rounding could flip
    assert np.array_equal(tent._keep_mask(x, p_a), want)
    back = tent.stats["backward_samples"]
    tent.forward_and_adapt(x)
    assert tent.stats["backward_samples"] - back == int(want.sum())
    for name, p in original.named_parameters():  # the frozen copy still holds the original parameters
        assert np.array_equal(dict(tent.frozen.named_parameters())[name].data, p.data), name


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_open_set_tent_step_is_the_kept_mean_entropy_minus_alpha_times_the_diversity(tiny, alpha):
    """Loss (1/|S|) sum_{i in S} H_i - alpha H(mean_i p_i), the mean prediction over the whole batch: the
    update (SGD, lr 1) equals minus a hand-built gradient of it."""
    model, x = tiny
    tent = TENT(model, optimizer="sgd", lr=1.0, momentum=0.0, open_set=True, diversity_weight=alpha)
    twin = copy.deepcopy(tent.model)
    logits = twin.forward(x)
    ent, probs = F.softmax_entropy_forward(logits)
    keep = np.zeros(len(x), dtype=bool)
    keep[::3] = True
    tent._keep_mask = lambda _x, _p: keep
    before = [p.data.copy() for p in tent.params]
    tent.forward_and_adapt(x)
    assert tent.stats["steps"] == 1 and tent.stats["backward_samples"] == (len(x) if alpha else int(keep.sum()))
    dlogits = np.zeros_like(logits)
    diversity_backward(probs, -alpha, dlogits)  # checked against finite differences below
    F.softmax_entropy_backward(np.where(keep, 1.0 / keep.sum(), 0.0).astype(np.float32), probs, logits,
                               dlogits=dlogits)
    twin.backward(dlogits)
    names = {id(p): n for n, p in tent.model.named_parameters()}
    grads = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
    for p, b in zip(tent.params, before):
        assert_close(b - p.data, grads[names[id(p)]], rtol=1e-4, atol=1e-7, name=names[id(p)])


def test_diversity_gradient_matches_finite_differences(rng):
    z = rng.standard_normal((5, 4))

    def h_bar():
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        pb = p.mean(0)
        return float(-(pb * np.log(pb)).sum())

    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = np.zeros_like(z)
    assert abs(diversity_backward(p, 1.0, g) - h_bar()) < 1e-12
    assert_close(g, numerical_grad(h_bar, z), 1e-6, 1e-9, "dH(pbar)/dz")


def test_small_resnet_forward_and_input_gradient_match_torch(torch):
    tF = torch.nn.functional
    model = SmallResNet((3, 6), num_classes=5, seed=1)
    for _, bn in model.batchnorms():
        bn.mode = "test_batch"
    rng = np.random.default_rng(2)
    x = rng.random((4, 1, 28, 28)).astype(np.float32)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    out = model.forward(x)
    dx = model.backward(w)
    t = {k: torch.tensor(v) for k, v in model.state_dict().items()}

    def bn(h, name):
        return tF.batch_norm(h, None, None, t[name + ".weight"], t[name + ".bias"], training=True, eps=1e-5)

    xt = torch.tensor(x, requires_grad=True)
    h = tF.relu(bn(tF.conv2d(xt, t["stem_conv.weight"], padding=1), "stem_bn"))
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        main = tF.relu(bn(tF.conv2d(h, t[b + ".conv1.weight"], stride=2, padding=1), b + ".bn1"))
        main = bn(tF.conv2d(main, t[b + ".conv2.weight"], padding=1), b + ".bn2")
        h = tF.relu(main + bn(tF.conv2d(h, t[b + ".short_conv.weight"], stride=2), b + ".short_bn"))
    ref = tF.linear(h.mean((2, 3)), t["head.weight"], t["head.bias"])
    (ref * torch.tensor(w)).sum().backward()
    assert_close(out, ref.detach().numpy(), 1e-4, 1e-5, "logits")
    assert_close(dx, xt.grad.numpy(), 1e-3, 1e-5, "dx")


def test_train_source_model_trains_once_then_loads_from_cache(tmp_path):
    from peftc.tta import SourceConfig, train_source_model

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 96)
    x = (rng.random((96, 28, 28)) * 0.2 + (y[:, None, None] / 10.0)).astype(np.float32)  # class = brightness
    cfg = SourceConfig(widths=(4, 8), epochs=3, batch_size=32, learning_rate=1e-2)
    m1, info1 = train_source_model(cfg, cache=tmp_path, data=(x, y, x, y))
    m2, info2 = train_source_model(cfg, cache=tmp_path, data=(x, y, x, y))
    assert not info1["cached"] and info2["cached"] and info1["path"] == info2["path"]
    assert info1["test_accuracy"] == info2["test_accuracy"] > 0.1
    assert all(np.array_equal(a, m2.state_dict()[k]) for k, a in m1.state_dict().items())


def test_eata_with_open_set_filter_averages_over_the_samples_both_filters_keep(tiny):
    """The loss is (1/|S2 and S|) sum w_i H_i: the update equals a hand-built backward with that mean."""
    model, x = tiny
    eata = EATA(model, e0_factor=1.0, optimizer="sgd", lr=1.0, momentum=0.0, open_set=True)
    twin = copy.deepcopy(eata.model)
    logits = twin.forward(x)
    ent, probs = F.softmax_entropy_forward(logits)
    reliable = ent < eata.e0
    keep = np.zeros(len(x), dtype=bool)
    keep[np.flatnonzero(reliable)[::2]] = True  # drop every other reliable sample
    assert 2 <= keep.sum() < reliable.sum()
    eata._keep_mask = lambda _x, _p: keep
    before = [p.data.copy() for p in eata.params]
    eata.forward_and_adapt(x)
    assert eata.stats["backward_samples"] == int(keep.sum())
    dent = np.where(keep, np.exp(eata.e0 - ent.astype(np.float64)), 0.0) / keep.sum()
    dlogits = np.zeros_like(logits)
    F.softmax_entropy_backward(dent.astype(np.float32), probs, logits, dlogits=dlogits)
    twin.backward(dlogits)
    names = {id(p): n for n, p in eata.model.named_parameters()}
    grads = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
    for p, b in zip(eata.params, before):  # SGD, lr 1, no momentum: the update is minus the gradient
        assert_close(b - p.data, grads[names[id(p)]], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_eata_with_diversity_steps_on_the_weighted_mean_entropy_minus_alpha_times_the_diversity(varied, alpha):
    """Loss (1/|S2|) sum_{i in S2} exp(E0 - H_i) H_i - alpha H(mean_i p_i), the mean prediction over the whole
    batch (the reference's EATA baseline with alpha 0.5): the update (SGD, lr 1) is minus its hand-built gradient,
    and with alpha > 0 every sample of the batch counts as a backward sample."""
    model, x = varied
    probe = copy.deepcopy(model)
    configure_for_tta(probe)
    median = float(np.median(F.softmax_entropy_forward(probe.forward(x))[0]))  # E0 between the rows' entropies
    eata = EATA(model, e0_factor=median / math.log(10), optimizer="sgd", lr=1.0, momentum=0.0, diversity_weight=alpha)
    twin = copy.deepcopy(eata.model)
    logits = twin.forward(x)
    ent, probs = F.softmax_entropy_forward(logits)
    reliable = ent < eata.e0  # first batch: no redundancy filter yet
    assert 0 < reliable.sum() < len(x)
    before = [p.data.copy() for p in eata.params]
    eata.forward_and_adapt(x)
    assert eata.stats["steps"] == 1 and eata.stats["backward_samples"] == (len(x) if alpha else int(reliable.sum()))
    dlogits = np.zeros_like(logits)
    diversity_backward(probs, -alpha, dlogits)
    dent = np.where(reliable, np.exp(eata.e0 - ent.astype(np.float64)), 0.0) / reliable.sum()
    F.softmax_entropy_backward(dent.astype(np.float32), probs, logits, dlogits=dlogits)
    twin.backward(dlogits)
    names = {id(p): n for n, p in eata.model.named_parameters()}
    grads = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
    for p, b in zip(eata.params, before):
        assert_close(b - p.data, grads[names[id(p)]], rtol=1e-4, atol=1e-7, name=names[id(p)])


def test_eata_with_diversity_steps_when_no_sample_is_reliable(tiny):
    model, x = tiny
    strict = EATA(model, e0_factor=1e-6, optimizer="sgd", lr=1.0, momentum=0.0, diversity_weight=0.5)
    before = [p.data.copy() for p in strict.params]
    strict.forward_and_adapt(x)
    assert strict.stats["steps"] == 1 and strict.stats["backward_samples"] == len(x)
    assert any(not np.array_equal(b, p.data) for b, p in zip(before, strict.params))


def test_eata_step_computes_no_convolution_or_head_gradients_and_no_input_gradient(tiny):
    model, x = tiny
    eata = EATA(model, e0_factor=1.0)
    calls = []
    stem = eata.model.stem_conv
    stem.backward = lambda *a, **k: calls.append("stem_conv")  # the stem convolution's backward is skipped
    eata.forward_and_adapt(x)
    assert eata.stats["steps"] == 1 and calls == []
    trained = {id(p) for p in eata.params}
    for name, p in eata.model.named_parameters():
        assert (p.grad is not None) == (id(p) in trained), name  # frozen weights never get a gradient buffer
