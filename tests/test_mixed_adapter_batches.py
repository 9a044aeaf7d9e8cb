"""Mixed-adapter batches (``model(x, adapter_names=[...])``) and modules_to_save with several adapters."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.tuners import LoraConfig, ModulesToSaveWrapper, PeftModel, SoraConfig, get_peft_model
from tests.conftest import assert_close, f32
from tests.lora_twins import HIDDEN, TinyBert, make_weights

# three adapters of different ranks, scales (one rsLoRA), targets, head bias and modules_to_save
CONFIGS = {
    "default": LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    "b": LoraConfig(r=3, lora_alpha=5, use_rslora=True, target_modules=["query", "key"]),
    "c": LoraConfig(r=4, lora_alpha=7, target_modules=["value", "output.dense"], lora_bias=True,
                    modules_to_save=["classifier"]),
}
NAMES = ["b", "__base__", "default", "c", "b", "c"]


def three_adapters(rng, weights=None):
    model = get_peft_model(TinyBert(weights or make_weights()), CONFIGS["default"])
    for name in ("b", "c"):
        model.add_adapter(name, CONFIGS[name])
    for n, p in model.named_parameters():  # every adapter nonzero (B = 0 at init would hide it)
        if ".lora_" in n or ".modules_to_save" in n:
            p.data[...] += f32(rng, *p.shape, scale=0.3)
    return model


def run_alone(model, name, x):
    if name == "__base__":
        with model.disable_adapter():
            return model(x)
    model.set_adapter(name)
    return model(x)


def test_mixed_batch_rows_equal_each_row_with_its_adapter_alone(rng):
    model = three_adapters(rng).eval()
    x = f32(rng, len(NAMES), 4, HIDDEN)
    y = model(x, adapter_names=NAMES)
    assert model.active_adapters == ["default"]
    for i, name in enumerate(NAMES):
        assert_close(y[i:i + 1], run_alone(model, name, x[i:i + 1]), 1e-5, 1e-5, f"row {i} ({name})")
    model.set_adapter("default")
    assert_close(model(x), np.concatenate([run_alone(model, "default", x[i:i + 1]) for i in range(len(NAMES))]),
                 1e-5, 1e-5, "after a mixed batch the active adapter runs again")


def test_mixed_batch_of_one_adapter_equals_the_active_adapter(rng):
    model = three_adapters(rng).eval()
    x = f32(rng, 3, 4, HIDDEN)
    model.set_adapter("c")
    assert_close(model(x, adapter_names=["c"] * 3), model(x), 1e-5, 1e-5, "all rows 'c'")
    with model.disable_adapter():
        base = model(x)
    assert_close(model(x, adapter_names=["__base__"] * 3), base, 1e-6, 1e-6, "all rows '__base__'")


def test_mixed_batch_backward_gives_each_adapter_the_gradient_of_its_own_rows(rng):
    model = three_adapters(rng)
    model.train()
    x = f32(rng, len(NAMES), 4, HIDDEN)
    params = dict(model.named_parameters())
    adapter_params = [n for n in params if ".lora_" in n or ".modules_to_save" in n]

    def train_every_adapter():
        for n, p in params.items():
            p.requires_grad = n in adapter_params

    dy = f32(rng, len(NAMES), 4, 3)
    train_every_adapter()
    model.zero_grad()
    model(x, adapter_names=NAMES)
    dx = model.backward(dy)
    mixed = {n: params[n].grad.copy() if params[n].grad is not None else None for n in adapter_params}
    expected = {n: np.zeros_like(params[n].data) for n in adapter_params}
    dx_expected = np.zeros_like(x)
    for name in ("default", "b", "c", "__base__"):
        rows = [i for i, n in enumerate(NAMES) if n == name]
        model.zero_grad()
        if name == "__base__":
            with model.disable_adapter():
                model(x[rows])
                dx_expected[rows] = model.backward(dy[rows])
            continue
        model.set_adapter(name)
        train_every_adapter()
        model(x[rows])
        dx_expected[rows] = model.backward(np.ascontiguousarray(dy[rows]))
        for n in adapter_params:
            if params[n].grad is not None:
                expected[n] += params[n].grad
    assert_close(dx, dx_expected, 1e-5, 1e-5, "dx")
    for n in adapter_params:
        got = mixed[n] if mixed[n] is not None else np.zeros_like(expected[n])
        assert_close(got, expected[n], 1e-5, 1e-5, n)
    assert any(np.abs(expected[n]).max() > 0 for n in adapter_params if n.endswith(".lora_A.b"))


def test_mixed_batch_bad_names_and_lengths_are_clear_errors(rng):
    model = three_adapters(rng).eval()
    x = f32(rng, 3, 4, HIDDEN)
    with pytest.raises(ValueError, match=r"unknown adapters \['nope', 'zz'\]"):
        model(x, adapter_names=["zz", "b", "nope"])
    with pytest.raises(ValueError, match="adapter_names has 2 entries but the batch has 3 rows"):
        model(x, adapter_names=["b", "c"])
    with pytest.raises(TypeError, match="one per batch row"):
        model(x, adapter_names="b")
    with pytest.raises(ValueError, match="reserved"):
        model.add_adapter("__base__", LoraConfig(r=2, target_modules=["query"]))
    model.merge_adapter()
    with pytest.raises(RuntimeError, match="merged"):
        model(x, adapter_names=["b", "c", "b"])
    model.unmerge_adapter()
    model.train()
    dropping = get_peft_model(TinyBert(make_weights()), LoraConfig(r=2, lora_dropout=0.1, target_modules=["query"]))
    with pytest.raises(NotImplementedError, match="lora_dropout"):
        dropping(x, adapter_names=["default"] * 3)
    dropping.eval()
    dropping(x, adapter_names=["default"] * 3)  # inference: dropout is off anyway
    sora = get_peft_model(TinyBert(make_weights()), SoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(NotImplementedError, match="SoraConfig"):
        sora(x, adapter_names=["default"] * 3)
    # a layer that sees a number of rows that is no multiple of the names
    layer = model.get_base_model().encoder.layer[0].attention.self.query
    with pytest.raises(ValueError, match="adapter_names has 2 entries, but the layer sees 3 rows"):
        with model.base_model.mixed_batch(["b", "c"]):
            layer(f32(rng, 3, HIDDEN))
    assert layer.row_adapters is None


# -- modules_to_save with several adapters ------------------------------------------------------------

def test_each_adapter_has_its_own_modules_to_save_copy(rng):
    model = three_adapters(rng)
    head = model.get_base_model().classifier
    assert isinstance(head, ModulesToSaveWrapper) and sorted(head.copies) == ["c", "default"]
    assert head.copies["c"].weight.data is not head.copies["default"].weight.data
    names = {n for n, _ in model.named_parameters()}
    assert {"base_model.model.classifier.modules_to_save.weight",
            "base_model.model.classifier.modules_to_save.c.weight"} <= names
    model.set_adapter("c")
    trainable = {n for n, _ in model.named_trainable_parameters()}
    assert "base_model.model.classifier.modules_to_save.c.weight" in trainable
    assert "base_model.model.classifier.modules_to_save.weight" not in trainable
    assert head.modules_to_save is head.copies["c"]
    model.set_adapter("b")  # no copy for "b": the original head runs, and nothing of it trains
    assert head.modules_to_save is head.original_module
    assert not any("classifier" in n for n, _ in model.named_trainable_parameters())


def test_modules_to_save_copies_are_saved_and_loaded_per_adapter(rng, tmp_path):
    weights = make_weights()
    model = three_adapters(rng, weights).eval()
    x = f32(rng, 2, 4, HIDDEN)
    want = {name: run_alone(model, name, x) for name in ("default", "c")}
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(TinyBert(weights), tmp_path)
    loaded.load_adapter(tmp_path / "c", adapter_name="c")
    for name in ("default", "c"):
        assert_close(run_alone(loaded, name, x), want[name], 1e-6, 1e-6, f"{name} after loading")
    loaded.set_adapter("default")
    loaded.delete_adapter("c")
    assert sorted(loaded.get_base_model().classifier.copies) == ["default"]


def test_mixed_batch_through_the_bert_sentence_classifier(rng):
    """The main job's model: BERT (attention over padded rows), mean pooling, a head copy per adapter."""
    from peftc.models import SentenceClassifier
    from tests.test_encoder_modules import random_bert

    model = get_peft_model(SentenceClassifier(random_bert(rng, 0.0), 3),
                           LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"],
                                      init_lora_weights=False), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=4, lora_alpha=3, use_rslora=True, target_modules=["query", "dense"],
                                      modules_to_save=["classifier"], init_lora_weights=False))
    for n, p in model.named_parameters():
        if ".modules_to_save" in n:
            p.data[...] += f32(rng, *p.shape, scale=0.3)
    model.eval()
    ids = rng.integers(1, 20, size=(4, 6)).astype(np.int64)
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] * 2 + [0] * 4], dtype=np.int64)
    names = ["b", "a", "__base__", "b"]
    logits = model({"input_ids": ids, "attention_mask": mask}, adapter_names=names)
    for i, name in enumerate(names):
        alone = run_alone(model, name, {"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]})
        assert_close(logits[i:i + 1], alone, 1e-5, 1e-5, f"row {i} ({name})")
