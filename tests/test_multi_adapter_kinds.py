"""Several SoRA, Hydra and Bone / MiSS adapters on one model: named adapters as LoRA has them, mixed-adapter
batches (each row its own adapter) whose gradients are each adapter's alone, MultiAdapterTrainer runs that end
where separate runs end, and Bone's add_adapter / set_adapter against PEFT's MiSS."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import AdapterTask, MultiAdapterTrainer, Trainer, TrainingConfig
from peftc.tuners import BoneConfig, HydraConfig, SoraConfig, get_peft_model
from peftc.tuners.sora import SoraTrainer
from tests.adapter_round_trips import perturb_trainable
from tests.conftest import assert_close, f32
from tests.lora_twins import CLASSES, HIDDEN, TinyBert, make_torch_twin, make_weights

# two adapters of each kind with different settings and targets (the twin: 6 -> 6 attention, 6 -> 10 -> 6 MLP)
KINDS = {
    "sora": (SoraConfig(r=2, lora_alpha=4, sparse_lambda=0.5, target_modules=["query", "value"]),
             SoraConfig(r=3, lora_alpha=3, use_rslora=True, sparse_lambda=0.2, target_modules=["query", "dense"])),
    "hydra": (HydraConfig(r=2, seq_r=3, target_modules=["query", "value"]),
              HydraConfig(r=1, seq_r=2, seq_alpha=5.0, target_modules=["value", "dense"])),
    "bone": (BoneConfig(r=2, target_modules=["query", "dense"]),
             BoneConfig(r=3, target_modules=["query", "value"])),
    "bat": (BoneConfig(r=2, init_weights="bat", target_modules=["query", "value"]),
            BoneConfig(r=3, init_weights="bat", target_modules=["query"])),
}


def _model(kind: str, heads: bool = False):
    first, second = KINDS[kind]
    if heads:
        first, second = (type(c)(**{**c.__dict__, "modules_to_save": ["classifier"]}) for c in (first, second))
    model = get_peft_model(TinyBert(make_weights()), first, adapter_name="a")
    model.add_adapter("b", second)
    return model


def _grads(model, names):
    return {n: p.grad.copy() for name in names for n, p in model.named_parameters()
            if p.requires_grad and any(p is q for q in model.get_adapter_parameters(name))}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_row_runs_its_adapter_and_each_adapter_gets_its_own_rows_gradients(kind, rng):
    model = _model(kind)
    for name in ("a", "b"):
        for p in model.get_adapter_parameters(name):
            p.requires_grad = True
    perturb_trainable(model, rng)
    names = ["b", "a", "__base__", "b", "a"]  # rows of one adapter not consecutive: gathered groups
    x, dy = f32(rng, 5, 4, HIDDEN), f32(rng, 5, 4, CLASSES)
    y = model(x, adapter_names=names)
    dx = model.backward(dy)
    together = _grads(model, ["a", "b"])
    assert together and all(np.abs(g).max() > 0 for g in together.values())
    want_dx = np.zeros_like(dx)
    for name in ("a", "b"):
        rows = [i for i, n in enumerate(names) if n == name]
        model.set_adapter(name)  # it alone trains; every gradient is cleared
        assert_close(y[rows], model(np.ascontiguousarray(x[rows])), 1e-5, 1e-6, f"{name} outputs")
        want_dx[rows] = model.backward(np.ascontiguousarray(dy[rows]))
        for n, g in _grads(model, [name]).items():
            assert_close(together[n], g, 1e-5, 1e-6, n)
    with model.disable_adapter():
        assert_close(y[2], model(x[2:3])[0], 1e-6, 1e-6, "__base__ row")
        want_dx[2] = model.backward(dy[2:3])[0]
    assert_close(dx, want_dx, 1e-5, 1e-6, "dx")


def _data(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": f32(rng, n, HIDDEN), "labels": rng.integers(0, CLASSES, n).astype(np.int64)}


def _config(seed: int, lr: float) -> TrainingConfig:
    return TrainingConfig(learning_rate=lr, batch_size=4, max_steps=4, seed=seed, progress=False, input_keys=("x",),
                          log_every=1)


@pytest.mark.parametrize("kind", ["sora", "hydra", "bone"])
def test_adapters_of_each_kind_trained_together_end_where_each_trained_alone_ends(kind, rng):
    data = {"a": _data(1, 11), "b": _data(2, 9)}
    configs = {"a": _config(3, 3e-2), "b": _config(4, 1e-2)}
    alone, together = _model(kind, heads=True), _model(kind, heads=True)
    for model in (alone, together):
        for name in ("a", "b"):
            perturb_trainable(model, np.random.default_rng(7))  # the same start on both sides
            model.set_adapter("b" if name == "a" else "a")
    start = {n: p.data.copy() for n, p in alone.named_parameters()}
    assert all(np.array_equal(p.data, start[n]) for n, p in together.named_parameters())
    for name in ("a", "b"):
        alone.set_adapter(name)
        (SoraTrainer if kind == "sora" else Trainer)(alone, configs[name], data[name]).train()
    MultiAdapterTrainer(together, [AdapterTask(n, data[n], configs[n]) for n in ("a", "b")]).train()
    got = dict(together.named_parameters())
    moved = 0
    for n, p in alone.named_parameters():
        assert_close(got[n].data, p.data, 2e-5, 2e-5, n)
        moved += not np.array_equal(p.data, start[n])
    assert moved >= 6
    if kind == "sora":  # the proximal step zeroed the same gates on both sides
        gates = [n for n in got if "lora_gate" in n]
        assert gates and all(np.array_equal(got[n].data == 0, dict(alone.named_parameters())[n].data == 0)
                             for n in gates)


@pytest.mark.parametrize("case", [dict(r=2), dict(r=2, init_weights="bat")], ids=["balance", "bat"])
def test_bone_add_adapter_and_set_adapter_match_peft(case, rng, torch):
    import peft

    weights = make_weights()
    targets = dict(target_modules=["query", "value"])
    ours = get_peft_model(TinyBert(weights), BoneConfig(**case, **targets))
    ours.add_adapter("other", BoneConfig(r=3, **targets) if "init_weights" not in case
                     else BoneConfig(r=3, init_weights="bat", **targets))
    theirs = peft.get_peft_model(make_torch_twin(torch, weights), peft.MissConfig(**case, **targets))
    theirs.add_adapter("other", peft.MissConfig(**{**case, "r": 3}, **targets))
    ours_params = dict(ours.named_parameters())
    assert {n for n in ours_params if "miss_block" in n} == {
        n.replace(".miss_block.default", ".miss_block") for n, _ in theirs.named_parameters() if "miss_block" in n}
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "miss_block" in n:
                value = f32(rng, *p.shape, scale=0.3)
                p.copy_(torch.from_numpy(value))
                ours_params[n.replace(".miss_block.default", ".miss_block")].data[...] = value
    x = f32(rng, 2, 5, HIDDEN)
    theirs.eval()
    for name in ("default", "other", "default"):
        ours.set_adapter(name)
        theirs.set_adapter(name)
        with torch.no_grad():
            assert_close(ours(x), theirs(torch.from_numpy(x)).numpy(), 1e-5, 1e-5, name)
    ours.set_adapter("other")  # peftc's set_adapter trains the adapter it makes active, and only it
    assert sorted(n for n, p in ours.named_parameters() if p.requires_grad) == sorted(
        n for n in ours_params if n.endswith("miss_block.other"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_named_adapters_of_each_kind_save_and_load_back(kind, tmp_path, rng):
    model = _model(kind)
    for name in ("a", "b"):
        model.set_adapter(name)
        perturb_trainable(model, rng)
    x = f32(rng, 2, 3, HIDDEN)
    want = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        want[name] = model(x)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(TinyBert(make_weights()), tmp_path / "a", adapter_name="a")
    loaded.load_adapter(tmp_path / "b", adapter_name="b")
    for name in ("a", "b"):
        loaded.set_adapter(name)
        assert_close(loaded(x), want[name], 1e-6, 1e-6, name)
    assert not np.allclose(want["a"], want["b"])
