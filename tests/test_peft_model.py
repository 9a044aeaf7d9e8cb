"""PeftModel: what is trainable, parameter counts as PEFT counts them, merge / unload / disable, gradients."""
from __future__ import annotations

import re

import numpy as np
import pytest

from peftc.nn import Linear, LoraLinear
from peftc.tuners import LoraConfig, ModulesToSaveWrapper, get_peft_model
from tests.conftest import assert_close, f32
from tests.lora_twins import HIDDEN, TinyBert, make_torch_twin, make_weights


def _peft(**kwargs):
    kwargs.setdefault("target_modules", ["query", "value"])
    return get_peft_model(TinyBert(make_weights()), LoraConfig(**kwargs))


def _trainable(model) -> set[str]:
    return {n for n, _ in model.named_trainable_parameters()}


def test_only_lora_parameters_are_trainable_by_default():
    model = _peft(r=2)
    names = _trainable(model)
    assert len(names) == 8 and all(n.endswith(("lora_A", "lora_B")) for n in names)
    assert all(p.grad is None for p in model.parameters())


def test_bias_options_choose_which_biases_train():
    lora_only = _trainable(_peft(bias="lora_only")) - _trainable(_peft())
    assert lora_only == {f"base_model.model.encoder.layer.{i}.attention.self.{n}.base.bias"
                         for i in range(2) for n in ("query", "value")}
    all_bias = _trainable(_peft(bias="all")) - _trainable(_peft())
    assert len(all_bias) == 11 and "base_model.model.classifier.bias" in all_bias


def test_modules_to_save_trains_a_copy_and_freezes_the_original():
    model = _peft(modules_to_save=["classifier"])
    head = model.get_base_model().classifier
    assert isinstance(head, ModulesToSaveWrapper)
    assert head.modules_to_save.weight.data is not head.original_module.weight.data
    assert {n for n in _trainable(model) if "classifier" in n} == {
        "base_model.model.classifier.modules_to_save.weight", "base_model.model.classifier.modules_to_save.bias"}


@pytest.mark.parametrize("kwargs", [{}, {"bias": "lora_only"}, {"modules_to_save": ["classifier"]},
                                    {"bias": "all", "lora_bias": True, "rank_pattern": {"query": 3}}])
def test_parameter_counts_match_peft(kwargs, torch, capsys):
    import peft

    ours = _peft(r=2, **kwargs)
    theirs = peft.get_peft_model(make_torch_twin(torch, make_weights()),
                                 peft.LoraConfig(r=2, target_modules=["query", "value"], **kwargs))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    ours.print_trainable_parameters()
    theirs.print_trainable_parameters()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == out[1] and out[0].startswith("trainable params: ")


def test_merge_matches_unmerged_and_unmerge_restores(rng):
    model = _peft(r=2, init_lora_weights=False, lora_bias=True)
    for layer in model._lora_layers():
        layer.lora_bias.data[...] = f32(rng, layer.out_features)
    x = f32(rng, 3, 4, HIDDEN)
    base_w = model.get_base_model().encoder.layer[0].attention.self.query.base.weight.data.copy()
    y = model(x)
    model.merge_adapter()
    assert_close(model(x), y, rtol=1e-5, atol=1e-5, name="merged")
    model.unmerge_adapter()
    assert_close(model.get_base_model().encoder.layer[0].attention.self.query.base.weight.data, base_w,
                 rtol=0, atol=1e-6, name="unmerged weight")
    assert_close(model(x), y, rtol=1e-5, atol=1e-5, name="unmerged")


def test_merge_and_unload_returns_plain_linears_with_same_outputs(rng):
    model = _peft(r=2, init_lora_weights=False, modules_to_save=["classifier"])
    model.get_base_model().classifier.modules_to_save.weight.data[...] += 0.5
    x = f32(rng, 5, HIDDEN)
    y = model(x)
    base = model.merge_and_unload()
    assert not any(isinstance(m, (LoraLinear, ModulesToSaveWrapper)) for _, m in base.named_modules())
    assert type(base.encoder.layer[1].attention.self.value) is Linear
    assert_close(base(x), y, rtol=1e-5, atol=1e-5, name="merge_and_unload")


def test_disable_adapter_runs_the_base_model(rng):
    weights = make_weights()
    x = f32(rng, 5, HIDDEN)
    y_base = TinyBert(weights)(x)
    model = get_peft_model(TinyBert(weights), LoraConfig(target_modules=["query"], init_lora_weights=False,
                                                         modules_to_save=["classifier"]))
    model.get_base_model().classifier.modules_to_save.bias.data[...] += 1.0
    y = model(x)
    assert np.abs(y - y_base).max() > 1e-3
    with model.disable_adapter():
        assert_close(model(x), y_base, rtol=1e-6, atol=1e-6, name="disabled")
    assert_close(model(x), y, rtol=0, atol=0, name="re-enabled")


def test_unload_restores_base_outputs(rng):
    weights = make_weights()
    x = f32(rng, 5, HIDDEN)
    model = get_peft_model(TinyBert(weights), LoraConfig(target_modules=["query"], init_lora_weights=False))
    model.merge_adapter()
    assert_close(model.unload()(x), TinyBert(weights)(x), rtol=1e-5, atol=1e-5, name="unload")


def _our_name(peft_name: str) -> str:
    """PEFT's in-memory parameter name -> peftc's (the adapter name "default" dropped)."""
    name = peft_name.replace(".modules_to_save.default.", ".modules_to_save.").replace(".base_layer.", ".base.")
    name = re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1", name)
    return re.sub(r"\.lora_B\.default\.bias$", ".lora_bias", name)


def test_gradients_match_peft_autograd(torch, rng):
    import peft

    kwargs = dict(r=2, lora_alpha=5, target_modules=["query", "value", "dense"], init_lora_weights=False,
                  use_rslora=True, bias="lora_only", modules_to_save=["classifier"])
    weights = make_weights()
    theirs = peft.get_peft_model(make_torch_twin(torch, weights), peft.LoraConfig(**kwargs))
    ours = get_peft_model(TinyBert(weights), LoraConfig(**kwargs))
    by_name = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        if p.requires_grad:
            by_name[_our_name(name)].data[...] = p.detach().numpy()
    x, dy = f32(rng, 4, HIDDEN), f32(rng, 4, 3)
    y = ours(x)
    dx = ours.backward(dy)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = theirs(xt)
    yt.backward(torch.from_numpy(dy))
    assert_close(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5, name="forward")
    assert_close(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5, name="dx")
    checked = 0
    for name, p in theirs.named_parameters():
        if p.requires_grad:
            assert_close(by_name[_our_name(name)].grad, p.grad.numpy(), rtol=1e-4, atol=1e-5, name=name)
            checked += 1
    assert checked == len(list(ours.trainable_parameters())) == 26


def test_training_steps_change_only_trainable_parameters(rng):
    from peftc.optim import AdamW

    model = _peft(r=2, lora_dropout=0.1, modules_to_save=["classifier"], bias="lora_only")
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    x, target = f32(rng, 16, HIDDEN), f32(rng, 16, 3)
    opt = AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        diff = model(x) - target
        losses.append(float((diff ** 2).mean()))
        model.backward((2.0 / diff.size) * diff)
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses
    for name, p in model.named_parameters():
        if name in frozen:
            assert np.array_equal(p.data, frozen[name]), name


def test_nested_modules_to_save_matches_wrap_the_outer_module_once():
    model = _peft(target_modules=["intermediate.dense"], modules_to_save=["attention", "self"])
    layer = model.get_base_model().encoder.layer[0]
    assert isinstance(layer.attention, ModulesToSaveWrapper)
    assert not isinstance(layer.attention.modules_to_save.self, ModulesToSaveWrapper)
    assert layer.attention.self is layer.attention.modules_to_save.self
    assert np.isfinite(model(np.ones((2, HIDDEN), np.float32))).all()
