"""Several LoRA adapters on one model: add / set / delete / load, files in PEFT's subfolder layout, and
add_weighted_adapter against PEFT 0.21.2 on the same factors."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from peftc import functional as F
from peftc.nn import LoraLinear
from peftc.tuners import BoneConfig, HydraConfig, LoraConfig, PeftModel, SoraConfig, get_peft_model
from tests.adapter_round_trips import perturb_trainable, sample_input
from tests.conftest import assert_close, f32
from tests.lora_twins import HIDDEN, TinyBert, make_torch_twin, make_weights

CFG_A = dict(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False)
CFG_B = dict(r=3, lora_alpha=5, target_modules=["query", "key"], init_lora_weights=False)


def _two_adapters(cfg_a=CFG_A, cfg_b=CFG_B, weights=None):
    model = get_peft_model(TinyBert(weights or make_weights()), LoraConfig(**cfg_a))
    model.add_adapter("other", LoraConfig(**cfg_b))
    return model


def _query(model):
    return model.get_base_model().encoder.layer[0].attention.self.query


def _trainable(model) -> set[str]:
    return {n for n, _ in model.named_trainable_parameters()}


def test_add_adapter_leaves_the_active_adapter_running_and_the_new_one_frozen(rng):
    weights = make_weights()
    x = f32(rng, 4, HIDDEN)
    single = get_peft_model(TinyBert(weights), LoraConfig(**CFG_A))
    y = single(x)
    model = _two_adapters(weights=weights)
    assert model.active_adapters == ["default"] and list(model.peft_config) == ["default", "other"]
    # the same seed draws the same default adapter, and adding "other" leaves it and the output alone
    assert_close(model(x), y, rtol=0, atol=0, name="default still runs")
    assert _trainable(model) == _trainable(single)
    names = {n for n, _ in model.named_parameters()}
    assert "base_model.model.encoder.layer.0.attention.self.query.lora_A.other" in names
    assert "base_model.model.encoder.layer.0.attention.self.key.lora_B.other" in names


def test_set_adapter_runs_and_trains_that_adapter_only(rng):
    weights = make_weights()
    model = _two_adapters(weights=weights)
    perturb_trainable(model, rng)
    model.set_adapter("other")
    assert model.active_adapters == ["other"]
    assert _trainable(model) and all(n.endswith((".lora_A.other", ".lora_B.other")) for n in _trainable(model))
    # a one-adapter model holding the same factors gives bit-identical outputs and gradients
    twin = get_peft_model(TinyBert(weights), LoraConfig(**CFG_B))
    ours = dict(model.named_parameters())
    for name, p in twin.named_trainable_parameters():
        p.data[...] = ours[f"{name}.other"].data
    x, dy = f32(rng, 4, HIDDEN), f32(rng, 4, 3)
    assert_close(model(x), twin(x), rtol=0, atol=0, name="forward")
    assert_close(model.backward(dy), twin.backward(dy), rtol=0, atol=0, name="dx")
    for name, p in twin.named_trainable_parameters():
        assert_close(ours[f"{name}.other"].grad, p.grad, rtol=0, atol=0, name=name)
    # value has no "other" adapter: it runs its base layer
    value = model.get_base_model().encoder.layer[0].attention.self.value
    assert value.lora_adapters.keys() == {"default"} and value._active is None
    model.set_adapter("default")
    assert all(n.endswith(("lora_A", "lora_B")) for n in _trainable(model))


def test_the_active_adapter_calls_the_kernel_with_its_own_arrays(rng, monkeypatch):
    model = _two_adapters()
    layer = _query(model)
    seen = []
    real = F.lora_forward

    def spy(*args, **kwargs):
        seen.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "lora_forward", spy)
    x = f32(rng, 3, HIDDEN)
    for name in ("default", "other"):
        seen.clear()
        model.set_adapter(name)
        model(x)
        args = next(a for a in seen if a[1] is layer.base.weight.data)
        ad = layer.lora_adapters[name]
        assert args[3] is ad.lora_A.data and args[4] is ad.lora_B.data and args[6] == ad.scaling


def test_parameter_counts_match_peft_with_two_adapters(torch):
    import peft

    ours = _two_adapters()
    theirs = peft.get_peft_model(make_torch_twin(torch, make_weights()), peft.LoraConfig(**CFG_A))
    theirs.add_adapter("other", peft.LoraConfig(**CFG_B))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    ours.set_adapter("other")
    theirs.set_adapter("other")
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def test_delete_adapter_removes_it_and_moves_the_active_adapter(rng):
    model = _two_adapters()
    x = f32(rng, 3, HIDDEN)
    model.set_adapter("other")
    with pytest.warns(UserWarning, match="active adapter is now 'default'"):
        model.delete_adapter("other")
    assert model.active_adapters == ["default"] and list(model.peft_config) == ["default"]
    assert not any(".other" in n for n, _ in model.named_parameters())
    # key held only "other": it is a plain Linear again, as before add_adapter
    from peftc.nn import Linear
    assert type(model.get_base_model().encoder.layer[1].attention.self.key) is Linear
    assert_close(model(x), get_peft_model(TinyBert(make_weights()), LoraConfig(**CFG_A))(x), rtol=0, atol=0,
                 name="after delete")
    with pytest.raises(ValueError, match="only adapter"):
        model.delete_adapter("default")
    with pytest.raises(ValueError, match=r"adapter_name='nope' is not an adapter of this model; it has \['default'\]"):
        model.delete_adapter("nope")


def test_disable_adapter_runs_the_base_model_with_several_adapters(rng):
    weights = make_weights()
    model = _two_adapters(weights=weights)
    model.set_adapter("other")
    x = f32(rng, 3, HIDDEN)
    y = model(x)
    with model.disable_adapter():
        assert_close(model(x), TinyBert(weights)(x), rtol=0, atol=0, name="disabled")
    assert_close(model(x), y, rtol=0, atol=0, name="re-enabled")


def test_bad_adapter_names_and_unsupported_combinations_are_clear_errors():
    model = _two_adapters()
    with pytest.raises(ValueError, match=r"set_adapter|adapter_name='x' is not an adapter"):
        model.set_adapter("x")
    with pytest.raises(NotImplementedError, match="one active adapter"):
        model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("other", LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="without '.'"):
        model.add_adapter("a.b", LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(NotImplementedError, match="SoraConfig"):
        model.add_adapter("s", SoraConfig(r=2, target_modules=["query"]))
    assert list(model.peft_config) == ["default", "other"]
    bone = get_peft_model(TinyBert(make_weights()), BoneConfig(r=2, target_modules=["query"]))
    with pytest.raises(NotImplementedError, match="BoneConfig"):
        bone.add_adapter("b", LoraConfig(r=2, target_modules=["key"]))
    with pytest.raises(NotImplementedError, match="HydraConfig"):
        get_peft_model(TinyBert(make_weights()), HydraConfig(r=2, target_modules=["query"]), adapter_name="h")
    model.merge_adapter()
    with pytest.raises(RuntimeError, match="unmerge"):
        model.set_adapter("other")
    model.unmerge_adapter()


def test_save_writes_other_adapters_in_subfolders_that_peft_loads(tmp_path, rng, torch):
    import peft

    weights = make_weights()
    model = _two_adapters(weights=weights)
    model.set_adapter("other")
    perturb_trainable(model, rng)
    model.set_adapter("default")
    perturb_trainable(model, rng)
    x = sample_input(rng)
    model.eval()
    y_default = model(x)
    model.set_adapter("other")
    y_other = model(x)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "other"]
    assert sorted(os.listdir(tmp_path / "other")) == ["adapter_config.json", "adapter_model.safetensors"]
    from peftc.io import load_file
    keys = load_file(tmp_path / "other" / "adapter_model.safetensors").keys()
    assert keys and all(re.search(r"\.(query|key)\.lora_[AB]\.weight$", k) for k in keys)
    theirs = peft.PeftModel.from_pretrained(make_torch_twin(torch, weights), str(tmp_path))
    theirs.load_adapter(str(tmp_path), adapter_name="other", subfolder="other")
    theirs.eval()
    with torch.no_grad():
        assert_close(theirs(torch.from_numpy(x)).numpy(), y_default, rtol=1e-5, atol=1e-5, name="PEFT default")
        theirs.set_adapter("other")
        assert_close(theirs(torch.from_numpy(x)).numpy(), y_other, rtol=1e-5, atol=1e-5, name="PEFT other")
    # and back into peftc
    ours = PeftModel.from_pretrained(TinyBert(weights), tmp_path)
    ours.load_adapter(tmp_path, "other", subfolder="other")
    assert _trainable(ours) == set()
    assert_close(ours(x), y_default, rtol=0, atol=0, name="peftc default")
    ours.set_adapter("other")
    assert_close(ours(x), y_other, rtol=0, atol=0, name="peftc other")


def test_selected_adapters_saves_only_those(tmp_path):
    model = _two_adapters()
    model.save_pretrained(tmp_path, selected_adapters=["other"])
    assert sorted(os.listdir(tmp_path)) == ["README.md", "other"]
    with pytest.raises(ValueError, match="selected_adapters='nope'"):
        model.save_pretrained(tmp_path, selected_adapters=["nope"])


def test_peft_folders_with_two_adapters_load_in_peftc(tmp_path, rng, torch):
    import peft

    weights = make_weights()
    theirs = peft.get_peft_model(make_torch_twin(torch, weights), peft.LoraConfig(**CFG_A))
    theirs.add_adapter("other", peft.LoraConfig(**CFG_B))
    theirs.save_pretrained(str(tmp_path))
    x = sample_input(rng)
    theirs.eval()
    theirs.set_adapter("other")
    with torch.no_grad():
        yt = theirs(torch.from_numpy(x)).numpy()
    ours = PeftModel.from_pretrained(TinyBert(weights), tmp_path)
    ours.load_adapter(tmp_path / "other", "other", is_trainable=True)
    assert _trainable(ours) and all(n.endswith(".other") for n in _trainable(ours))
    ours.set_adapter("other", inference_mode=True)
    assert_close(ours(x), yt, rtol=1e-5, atol=1e-5, name="other from PEFT")
    with pytest.raises(FileNotFoundError, match="adapter folder not found"):
        ours.load_adapter(tmp_path / "nope", "third")
    assert list(ours.peft_config) == ["default", "other"]


# -- add_weighted_adapter ------------------------------------------------------------------------------

def _peft_twin_pair(torch, cfg_a, cfg_b, rng):
    """(peftc model, PEFT model) with adapters "default" and "other" holding the same random factors."""
    import peft

    weights = make_weights()
    ours = get_peft_model(TinyBert(weights), LoraConfig(**cfg_a))
    ours.add_adapter("other", LoraConfig(**cfg_b))
    theirs = peft.get_peft_model(make_torch_twin(torch, weights), peft.LoraConfig(**cfg_a))
    theirs.add_adapter("other", peft.LoraConfig(**cfg_b))
    by_name = dict(ours.named_parameters())
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            m = re.search(r"\.(lora_[AB])\.(default|other)\.(weight|bias)$", name)
            if not m:
                continue
            key = name[:m.start()] + "." + (m.group(1) if m.group(3) == "weight" else "lora_bias")
            key += "" if m.group(2) == "default" else ".other"
            target = by_name[key]
            target.data[...] = f32(rng, *target.shape, scale=0.5)
            p.copy_(torch.from_numpy(target.data))
    return ours, theirs


def _layers(ours, theirs):
    for path, layer in ours.get_base_model().named_modules():
        if isinstance(layer, LoraLinear):
            yield path, layer, theirs.base_model.model.get_submodule(path)


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("combination_type", ["linear", "cat", "svd"])
def test_weighted_adapter_factors_match_peft(combination_type, rslora, torch, rng):
    cfg_a = dict(CFG_A, use_rslora=rslora)
    cfg_b = dict(CFG_B, use_rslora=rslora, r=2 if combination_type == "linear" else 3)
    ours, theirs = _peft_twin_pair(torch, cfg_a, cfg_b, rng)
    weights = [0.7, -1.3]
    ours.add_weighted_adapter(["default", "other"], weights, "mix", combination_type=combination_type)
    theirs.add_weighted_adapter(["default", "other"], weights, "mix", combination_type=combination_type)
    checked = 0
    for path, layer, their_layer in _layers(ours, theirs):
        mix = layer.lora_adapters["mix"]
        a_t = their_layer.lora_A["mix"].weight.detach().numpy()
        b_t = their_layer.lora_B["mix"].weight.detach().numpy()
        if combination_type == "svd":
            # singular vectors are defined up to sign: compare the products, which are unique. PEFT runs the SVD
            # in float32, so its product is off by about eps32 * |delta| (~1e-6 here); peftc's runs in float64
            assert_close(mix.lora_B.data @ mix.lora_A.data, b_t @ a_t, rtol=1e-5, atol=5e-6, name=f"{path} BA")
        else:
            assert_close(mix.lora_A.data, a_t, rtol=1e-6, atol=1e-6, name=f"{path} A")
            assert_close(mix.lora_B.data, b_t, rtol=1e-6, atol=1e-6, name=f"{path} B")
        assert mix.scaling == 1.0
        if not rslora:
            assert their_layer.scaling["mix"] == 1.0
        checked += 1
    assert checked == 6  # query, key, value in two layers
    if combination_type == "cat":
        layer = _query(ours)
        expected = 0.7 * layer.delta_weight("default") - 1.3 * layer.delta_weight("other")
        assert_close(layer.delta_weight("mix"), expected, rtol=1e-5, atol=1e-6, name="cat is exact")


@pytest.mark.parametrize("combination_type", ["linear", "cat", "svd"])
@pytest.mark.parametrize("variant", [
    {}, {"use_rslora": True}, {"lora_bias": True}, {"lora_dropout": 0.2},
    {"rank_pattern": {"layer.1.attention.self.value": 1}, "alpha_pattern": {"value": 3}},
])
def test_one_adapter_at_weight_one_reproduces_itself(variant, combination_type, rng, tmp_path, torch):
    weights = make_weights()
    model = get_peft_model(TinyBert(weights), LoraConfig(**{**CFG_A, **variant}))
    perturb_trainable(model, rng)
    model.eval()
    x = sample_input(rng)
    y = model(x)
    if combination_type == "linear":
        model.add_weighted_adapter(["default"], [1.0], "same", combination_type="linear")
    else:
        # a second adapter at weight 0 must not change anything either
        model.add_adapter("zero", LoraConfig(**CFG_B))
        model.set_adapter("zero")
        perturb_trainable(model, rng)
        model.set_adapter("default")
        model.add_weighted_adapter(["default", "zero"], [1.0, 0.0], "same", combination_type=combination_type,
                                   svd_rank=2 if combination_type == "svd" else None)
    model.set_adapter("same")
    model.eval()
    assert_close(model(x), y, rtol=1e-5, atol=1e-5, name=f"{combination_type} {variant}")
    # and its folder loads in PEFT with the same output
    model.save_pretrained(tmp_path, selected_adapters=["same"])
    from tests.adapter_round_trips import peft_output
    _, yt = peft_output(tmp_path / "same", weights, x, torch)
    assert_close(yt, y, rtol=1e-5, atol=1e-5, name=f"PEFT loads {combination_type} {variant}")


def test_weighted_adapter_svd_options(rng):
    model = _two_adapters()
    perturb_trainable(model, rng)
    model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "r1", combination_type="svd", svd_rank=1)
    layer = _query(model)
    full = layer.delta_weight("default") + layer.delta_weight("other")
    s = np.linalg.svd(full.astype(np.float64), compute_uv=False)
    # the rank-1 truncation's error is the second singular value (Eckart-Young)
    assert layer.lora_adapters["r1"].r == 1
    assert abs(np.linalg.norm(layer.delta_weight("r1") - full, 2) - s[1]) < 1e-5
    model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "plain", combination_type="svd")
    model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "clamped", combination_type="svd",
                               svd_clamp=0.9)
    plain, clamped = layer.lora_adapters["plain"], layer.lora_adapters["clamped"]
    hi = np.quantile(np.concatenate([plain.lora_B.data.ravel(), plain.lora_A.data.ravel()]), 0.9)
    assert max(np.abs(plain.lora_A.data).max(), np.abs(plain.lora_B.data).max()) > hi  # the clamp bites
    assert_close(clamped.lora_A.data, np.clip(plain.lora_A.data, -hi, hi), rtol=0, atol=1e-6, name="clamped A")
    assert_close(clamped.lora_B.data, np.clip(plain.lora_B.data, -hi, hi), rtol=0, atol=1e-6, name="clamped B")


def test_weighted_adapter_bad_input_is_a_clear_error():
    model = _two_adapters()
    cases = [
        (dict(adapters=["default", "nope"], weights=[1, 1]), ValueError, r"adapters='nope' is not an adapter"),
        (dict(adapters=["default", "other"], weights=[1.0]), ValueError, r"one number per adapter \(2\), got 1"),
        (dict(adapters=["default", "other"], weights=[1.0, float("nan")]), ValueError, "finite"),
        (dict(adapters=[], weights=[]), ValueError, "non-empty"),
        (dict(adapters=["default", "other"], weights=[1, 1], combination_type="linear"), ValueError,
         r"equal rank, got \{'default': 2, 'other': 3\}"),
        (dict(adapters=["default", "other"], weights=[1, 1], combination_type="ties"), NotImplementedError,
         "'ties' is not implemented"),
        (dict(adapters=["default", "other"], weights=[1, 1], combination_type="mean"), ValueError,
         "combination_type must be one of"),
        (dict(adapters=["default", "other"], weights=[1, 1], combination_type="svd", svd_rank=7), ValueError,
         r"svd rank 7 exceeds min\(out_features, in_features\)"),
        (dict(adapters=["default", "other"], weights=[1, 1], adapter_name="other"), ValueError, "already exists"),
        (dict(adapters=["default", "other"], weights=[1, 1], svd_driver="gesvdj"), ValueError, "svd_driver"),
    ]
    for kwargs, exc, match in cases:
        kwargs.setdefault("adapter_name", "mix")
        with pytest.raises(exc, match=match):
            model.add_weighted_adapter(**kwargs)
        assert list(model.peft_config) == ["default", "other"], kwargs
        assert all("mix" not in layer.lora_adapters for layer in model._lora_layers())


def test_load_adapter_with_a_bad_weights_file_leaves_the_model_unchanged(tmp_path, rng):
    weights = make_weights()
    get_peft_model(TinyBert(weights), LoraConfig(**CFG_B)).save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\xff" * 40)
    model = get_peft_model(TinyBert(weights), LoraConfig(**CFG_A))
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        model.load_adapter(tmp_path, "other")
    assert list(model.peft_config) == ["default"] and [n for n, _ in model.named_parameters()] == names


def test_layer_level_adapter_api(rng):
    from peftc.nn import Linear, SoraLinear

    layer = LoraLinear(Linear(4, 3), r=2, init_lora_weights=False)
    layer.add_adapter("other", r=3, lora_alpha=6, init_lora_weights=False)
    assert [n for n, _ in layer.named_parameters()] == ["lora_A", "lora_B", "lora_A.other", "lora_B.other",
                                                         "base.weight", "base.bias"]
    layer.set_adapter("other")
    assert layer.r == 3 and layer.scaling == 2.0 and layer.lora_A is layer.lora_adapters["other"].lora_A
    x = f32(rng, 5, 4)
    expected = x @ layer.base.weight.data.T + layer.base.bias.data + x @ layer.delta_weight().T
    assert_close(layer(x), expected, rtol=1e-5, atol=1e-5, name="other adapter forward")
    with pytest.raises(KeyError, match=r"no adapter 'nope' on this layer \(it holds \['default', 'other'\]\)"):
        layer.delta_weight("nope")
    with pytest.raises(ValueError, match="already holds an adapter named 'other'"):
        layer.add_adapter("other")
    layer.delete_adapter("other")
    assert layer._active is None and _runs_base(layer, x)
    with pytest.raises(AttributeError, match="does not hold the active adapter 'other'"):
        _ = layer.lora_A
    with pytest.raises(NotImplementedError, match="SoraLinear holds one adapter"):
        SoraLinear(Linear(4, 3), r=2).add_adapter("b")


def _runs_base(layer, x) -> bool:
    """The layer without its active adapter runs its base layer exactly."""
    return np.array_equal(layer(x), layer.base(x))
