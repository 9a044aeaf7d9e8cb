"""SoRA and Hydra through get_peft_model: dispatch, gradients, merge, files (PEFTC_* refused by PEFT;
pruned / exported plain LoRA files loaded by PEFT with identical outputs), configs, gate training."""
from __future__ import annotations

import json

import numpy as np
import pytest

from peftc import reference as R
from peftc.nn import HydraLinear, Linear, SoraLinear
from peftc.train import TrainingConfig
from peftc.tuners import HydraConfig, LoraConfig, PeftModel, SoraConfig, get_peft_model
from peftc.tuners import hydra as hydra_tools
from peftc.tuners import sora as sora_tools
from tests.conftest import assert_close, f32
from tests.adapter_round_trips import (check_files_load_in_peft, check_files_load_in_peftc, perturb_trainable,
                                        sample_input)
from tests.lora_twins import CLASSES, HIDDEN, TinyBert, make_torch_twin, make_weights

SORA_TARGETS = ["query", "value", "dense"]


def _sora_model(rng, **kw) -> PeftModel:
    model = get_peft_model(TinyBert(make_weights()), SoraConfig(**{"r": 4, "target_modules": SORA_TARGETS, **kw}))
    perturb_trainable(model, rng)
    return model


def _hydra_model(rng, **kw) -> PeftModel:
    model = get_peft_model(TinyBert(make_weights()), HydraConfig(**{"r": 2, "seq_r": 3, "lora_alpha": 3,
                                                                    "seq_alpha": 1.5,
                                                                    "target_modules": ["output.dense", "value"],
                                                                    **kw}))
    perturb_trainable(model, rng)
    return model


# ---- dispatch and gradients ------------------------------------------------------------------------
def test_get_peft_model_injects_the_layer_the_config_names(rng):
    sora = _sora_model(rng)
    layers = sora_tools.sora_layers(sora)
    assert len(layers) == 8 and all(isinstance(m, SoraLinear) for m in layers.values())
    total = sum(m.r for m in layers.values())
    assert all(m.l1_weight == pytest.approx(1e-3 / total) for m in layers.values())
    names = {n for n, _ in sora.named_trainable_parameters()}
    assert "base_model.model.encoder.layer.0.attention.self.query.lora_gate" in names
    hydra = _hydra_model(rng)
    assert sorted(hydra_tools.hydra_layers(hydra)) == [f"encoder.layer.{i}.{m}" for i in range(2)
                                                       for m in ("attention.self.value", "output.dense")]
    assert "base_model.model.encoder.layer.1.output.dense.hydra_seq_B" in {
        n for n, _ in hydra.named_trainable_parameters()}


def test_sora_layer_gate_gradient_adds_the_l1_subgradient(rng):
    base = Linear.from_weights(f32(rng, 5, 6), f32(rng, 5))
    layer = SoraLinear(base, r=4, lora_alpha=8, l1_weight=0.25)
    layer.lora_B.data[...] = f32(rng, 5, 4)
    layer.lora_gate.data[2] = 0.0
    for p in layer.adapter_parameters().values():
        p.requires_grad = True
    x, dy = f32(rng, 3, 6), f32(rng, 3, 5)
    layer.train()
    layer.forward(x)
    layer.backward(dy)
    x64 = x.astype(np.float64)
    _, _, u = R.sora_forward(x64, base.weight.data, base.bias.data, layer.lora_A.data, layer.lora_B.data,
                             layer.lora_gate.data, 2.0)
    expect = np.zeros(4)
    R.sora_backward(dy.astype(np.float64), x64, u, base.weight.data, layer.lora_A.data, layer.lora_B.data,
                    layer.lora_gate.data, 2.0, dgate=expect)
    expect += 0.25 * np.sign(layer.lora_gate.data)  # sign(0) = 0, as torch's abs backward
    assert_close(layer.lora_gate.grad, expect, 1e-5, 1e-5, "dgate")


def test_hydra_model_gradients_match_torch(rng, torch):
    model = _hydra_model(rng)
    x, dy = sample_input(rng), f32(rng, 2, 5, CLASSES)
    model.train()
    y = model.forward(x)
    model.backward(dy)
    twin = make_torch_twin(torch, make_weights())
    params = {}
    for name, layer in hydra_tools.hydra_layers(model).items():
        mod = twin.get_submodule(name)
        t = {k: torch.tensor(p.data, requires_grad=True) for k, p in layer.adapter_parameters().items()}
        params[name] = (layer, t)

        def hook(m, inp, out, t=t, layer=layer):
            return (out + layer.scaling * (inp[0] @ t["lora_A.weight"].T) @ t["lora_B.weight"].T
                    + layer.seq_scaling * (out @ t["hydra_seq_A.weight"].T) @ t["hydra_seq_B.weight"].T)
        mod.register_forward_hook(hook)
    yt = twin(torch.from_numpy(x))
    (yt * torch.from_numpy(dy)).sum().backward()
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    for name, (layer, t) in params.items():
        for k, p in layer.adapter_parameters().items():
            assert_close(p.grad, t[k].grad.numpy(), 1e-4, 1e-5, f"{name}.{k}")


# ---- merge -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [_sora_model, _hydra_model])
def test_merged_model_matches_unmerged_and_unmerge_restores(make, rng):
    model = make(rng)
    model.eval()
    x = sample_input(rng)
    y = model(x).copy()
    weights = {n: m.base.weight.data.copy() for n, m in model.named_modules() if isinstance(m, (SoraLinear,
                                                                                                HydraLinear))}
    model.merge_adapter()
    assert_close(model(x), y, 1e-5, 1e-5, "merged")
    model.unmerge_adapter()
    for n, m in model.named_modules():
        if n in weights:
            assert_close(m.base.weight.data, weights[n], 1e-5, 1e-5, f"{n} unmerged")
    assert_close(model(x), y, 1e-5, 1e-5, "unmerged")


# ---- files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,kind", [(_sora_model, "PEFTC_SORA"), (_hydra_model, "PEFTC_HYDRA")])
def test_save_then_load_round_trip(make, kind, rng, tmp_path):
    model = make(rng)
    x = sample_input(rng)
    y = model.eval()(x)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == kind
    loaded = PeftModel.from_pretrained(TinyBert(make_weights()), tmp_path)
    assert type(loaded.active_peft_config) is type(model.active_peft_config)
    saved, ours = loaded.active_peft_config.to_dict(), model.active_peft_config.to_dict()
    assert {k: v for k, v in saved.items() if k != "inference_mode"} == \
        {k: v for k, v in ours.items() if k != "inference_mode"}
    np.testing.assert_array_equal(loaded(x), y)


@pytest.mark.parametrize("make", [_sora_model, _hydra_model])
def test_peft_refuses_peftc_only_adapter_files(make, rng, tmp_path, torch):
    import peft

    make(rng).save_pretrained(tmp_path)
    with pytest.raises(Exception) as info:
        peft.PeftConfig.from_pretrained(str(tmp_path))
    assert "PEFTC_" in str(info.value)
    with pytest.raises(Exception):
        peft.PeftModel.from_pretrained(make_torch_twin(torch, make_weights()), str(tmp_path))


def _zero_some_gates(model) -> None:
    layers = sora_tools.sora_layers(model)
    for i, m in enumerate(layers.values()):
        m.lora_gate.data[: i % 4] = 0.0
    next(iter(layers.values())).lora_gate.data[:] = 0.0  # one layer pruned away entirely


@pytest.mark.parametrize("rslora", [False, True])
def test_pruned_sora_is_an_identical_plain_lora_in_peftc_and_peft(rslora, rng, tmp_path, torch):
    model = _sora_model(rng, use_rslora=rslora, modules_to_save=["classifier"])
    _zero_some_gates(model)
    x = sample_input(rng)
    y = model.eval()(x).copy()
    report = sora_tools.sparsity_report(model)
    config = sora_tools.save_pruned(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA"
    assert "encoder.layer.0.attention.self.query" not in config.target_modules
    assert sum(config.rank_pattern.values()) == sum(v["active"] for v in report["layers"].values())
    check_files_load_in_peft(tmp_path, make_weights(), x, y, "PEFT on the pruned file", torch)
    check_files_load_in_peftc(tmp_path, make_weights(), x, y, "peftc on the pruned file")
    lora = sora_tools.prune(model)
    assert isinstance(lora.active_peft_config, LoraConfig) and lora.active_peft_config.peft_type == "LORA"
    assert_close(lora.eval()(x), y, 1e-5, 1e-5, "prune() in place")


def test_prune_with_every_gate_zero_is_a_clear_error(rng):
    model = _sora_model(rng)
    for m in sora_tools.sora_layers(model).values():
        m.lora_gate.data[:] = 0.0
    with pytest.raises(ValueError, match="every SoRA gate is zero"):
        sora_tools.pruned_lora(model)


def test_hydra_export_is_an_identical_plain_lora_in_peftc_and_peft(rng, tmp_path, torch):
    model = _hydra_model(rng, modules_to_save=["classifier"])
    x = sample_input(rng)
    y = model.eval()(x).copy()
    config = hydra_tools.save_as_lora(model, tmp_path)
    assert config.r == 5 and config.lora_alpha == 5 and config.lora_bias
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"
    check_files_load_in_peft(tmp_path, make_weights(), x, y, "PEFT on the exported file", torch)
    check_files_load_in_peftc(tmp_path, make_weights(), x, y, "peftc on the exported file")


# ---- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs,match", [
    (SoraConfig, dict(lora_bias=True), "lora_bias"),
    (SoraConfig, dict(sparse_lambda=-1.0), "sparse_lambda"),
    (SoraConfig, dict(sparse_lambda_2=float("nan")), "sparse_lambda_2"),
    (SoraConfig, dict(sparse_lr=0.0), "sparse_lr"),
    (SoraConfig, dict(lambda_schedule="cosine"), "lambda_schedule"),
    (SoraConfig, dict(lambda_schedule="exp_linear", sparse_lambda_2=0.0), "exp_linear"),
    (SoraConfig, dict(lambda_num=0), "lambda_num"),
    (SoraConfig, dict(sora_code_compat="yes"), "sora_code_compat"),
    (SoraConfig, dict(r=0), "r must be a positive integer"),
    (HydraConfig, dict(seq_r=0), "seq_r"),
    (HydraConfig, dict(seq_alpha=float("inf")), "seq_alpha"),
    (HydraConfig, dict(lora_dropout=0.1), "lora_dropout"),
    (HydraConfig, dict(bias="all"), "bias"),
    (HydraConfig, dict(rank_pattern={"query": 2}), "rank_pattern"),
])
def test_bad_configs_are_clear_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(target_modules=["query"], **kwargs)


def test_config_files_keep_their_type_and_refuse_the_wrong_class(tmp_path):
    SoraConfig(target_modules=["query"], sparse_lambda_2=3e-4, sora_code_compat=True).save_pretrained(tmp_path)
    back = SoraConfig.from_pretrained(tmp_path)
    assert back.sparse_lambda_2 == 3e-4 and back.sora_code_compat
    with pytest.raises(ValueError, match="PEFTC_SORA"):
        LoraConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="LORA"):
        SoraConfig.from_dict({"peft_type": "LORA"})


# ---- gate training -----------------------------------------------------------------------------------
@pytest.mark.parametrize("compat", [False, True])
def test_sparse_adamw_is_adamw_then_the_proximal_step(compat, rng):
    from peftc.nn import Parameter

    gate, other = Parameter(f32(rng, 16, scale=0.01)), Parameter(f32(rng, 3))
    gate.grad, other.grad = f32(rng, 16), f32(rng, 3)
    lr, xi = 0.01, 0.5
    expect = gate.data.astype(np.float64)
    R.adamw_step(expect, np.zeros(16), np.zeros(16), gate.grad.astype(np.float64), lr, 0.9, 0.999, 1e-8, 0.0, 1)
    tau = xi if compat else lr * xi
    R.sora_gate_threshold(expect, tau, compat)
    opt = sora_tools.SparseAdamW([{"params": [other]}, {"params": [gate], "weight_decay": 0.0, "sparse_xi": xi,
                                                        "sora_code_compat": compat}], lr=lr, weight_decay=0.1)
    opt.step()
    assert_close(gate.data, expect, 1e-5, 1e-6, "gate")
    assert (np.count_nonzero(gate.data) == 0) == compat  # tau = 0.5 wipes every gate; lr * xi = 0.005 does not


def test_xi_schedule_values():
    assert sora_tools.xi_schedule("linear", 0.0, 7e-4, 8) == pytest.approx([i * 1e-4 for i in range(8)])
    assert sora_tools.xi_schedule("exp_linear", 1e-4, 1e-2, 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert sora_tools.xi_schedule("log_linear", 0.0, 1.0, 2) == pytest.approx([0.0, 1.0])
    with pytest.raises(ValueError, match="exp_linear"):
        sora_tools.xi_schedule("exp_linear", 0.0, 1.0, 3)


def _data(rng, n=48):
    return {"x": f32(rng, n, HIDDEN), "labels": rng.integers(0, CLASSES, n).astype(np.int64)}


def test_sora_trainer_sparsifies_gates_and_resumes_exactly(rng, tmp_path):
    model = _sora_model(rng, sparse_lambda_2=5.0, sparse_lr=0.05)
    cfg = TrainingConfig(learning_rate=0.01, batch_size=8, num_epochs=2, progress=False, input_keys=("x",),
                         max_grad_norm=0.1)
    data = _data(rng)
    start = {n: p.data.copy() for n, p in model.named_trainable_parameters()}
    trainer = sora_tools.SoraTrainer(model, cfg, data)
    assert trainer.gate_group["lr"] == pytest.approx(0.05) and trainer.gate_group["weight_decay"] == 0.0
    trainer.train()
    report = sora_tools.sparsity_report(model)
    assert report["active_fraction"] < 0.5, report
    # lambda1 * sum|g| / P over all P gate entries of the model, the exact value of the trained gates
    gates = np.concatenate([m.lora_gate.data.ravel() for m in sora_tools.sora_layers(model).values()])
    lam = model.peft_config["default"].sparse_lambda
    assert lam > 0 and 0 < np.count_nonzero(gates) < gates.size
    assert sora_tools.sparsity_penalty(model) == pytest.approx(lam * np.abs(gates.astype(np.float64)).sum()
                                                               / gates.size, rel=1e-12)
    end = {n: p.data.copy() for n, p in model.named_trainable_parameters()}
    # interrupted after 5 steps and resumed from the checkpoint: the same end state, bit for bit
    for n, p in model.named_trainable_parameters():
        p.data[...] = start[n]
    first = sora_tools.SoraTrainer(model, cfg, data)
    first.train(until_step=5)
    first.save_checkpoint(tmp_path / "ckpt.npz")
    for n, p in model.named_trainable_parameters():
        p.data[...] = start[n]
    second = sora_tools.SoraTrainer(model, cfg, data)
    second.train(resume_from=tmp_path / "ckpt.npz")
    for n, p in model.named_trainable_parameters():
        np.testing.assert_array_equal(p.data, end[n], err_msg=n)


def test_sora_schedule_runs_one_stage_per_xi(rng):
    model = _sora_model(rng, lambda_schedule="linear", sparse_lambda_2=0.0, max_lambda=60.0, lambda_num=3)
    cfg = TrainingConfig(learning_rate=0.01, batch_size=8, num_epochs=1, progress=False, input_keys=("x",))
    stages = sora_tools.train_sora_schedule(model, cfg, _data(rng), _data(rng, 16), stage_epochs=1)
    assert [s["xi"] for s in stages] == pytest.approx([0.0, 30.0, 60.0])
    active = [sum(s["active_ranks"].values()) for s in stages]
    # xi = 0 keeps every gate (dense start); each larger xi prunes further
    assert active[0] == 32 and active[2] <= active[1] < active[0], active
    assert all(s["eval"] is not None and s["adapter"] for s in stages)
