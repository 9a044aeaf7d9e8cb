"""MultiAdapterTrainer: adapters trained together in mixed batches end where each trained alone would."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import AdapterTask, MultiAdapterTrainer, Trainer, TrainingConfig
from peftc.multi_adapter_train import stack_batches
from peftc.tuners import LoraConfig, get_peft_model
from tests.conftest import assert_close, f32
from tests.lora_twins import CLASSES, HIDDEN, TinyBert, make_weights

# different ranks, scales (rsLoRA), targets, heads (modules_to_save), optimizer and data settings
ADAPTERS = {
    "a": (LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], modules_to_save=["classifier"],
                     init_lora_weights=False),
          TrainingConfig(learning_rate=3e-2, batch_size=4, max_steps=6, seed=1, progress=False, input_keys=("x",),
                         log_every=1)),
    "b": (LoraConfig(r=3, lora_alpha=5, use_rslora=True, target_modules=["query", "key"], init_lora_weights=False),
          TrainingConfig(learning_rate=1e-2, batch_size=3, max_steps=4, seed=2, weight_decay=0.1, progress=False,
                         input_keys=("x",), log_every=1)),
    "c": (LoraConfig(r=4, lora_alpha=7, target_modules=["value", "output.dense"], lora_bias=True,
                     modules_to_save=["classifier"], init_lora_weights=False),
          TrainingConfig(learning_rate=2e-2, batch_size=5, max_steps=5, seed=3, max_grad_norm=0.05, warmup_steps=2,
                         progress=False, input_keys=("x",), log_every=1)),
}


def build(names, weights):
    first, *rest = names
    model = get_peft_model(TinyBert(weights), ADAPTERS[first][0], adapter_name=first)
    for name in rest:
        model.add_adapter(name, ADAPTERS[name][0])
    return model


def task_data(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": f32(rng, n, HIDDEN), "labels": rng.integers(0, CLASSES, n).astype(np.int64)}


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "c"]])
def test_adapters_trained_together_match_each_trained_alone(names):
    weights = make_weights()
    data = {name: task_data(10 + i, 13 + 2 * i) for i, name in enumerate(names)}
    alone = build(names, weights)
    start = {n: p.data.copy() for n, p in alone.named_parameters()}
    alone_histories = {}
    for name in names:
        alone.set_adapter(name)
        single = Trainer(alone, ADAPTERS[name][1], data[name])
        single.train()
        alone_histories[name] = single.history
    together = build(names, weights)
    assert all(np.array_equal(p.data, start[n]) for n, p in together.named_parameters())
    trainer = MultiAdapterTrainer(together, [AdapterTask(name, data[name], ADAPTERS[name][1]) for name in names])
    histories = trainer.train()
    got = dict(together.named_parameters())
    moved = 0
    for n, p in alone.named_parameters():
        assert_close(got[n].data, p.data, 2e-5, 2e-5, n)
        moved += not np.array_equal(p.data, start[n])
    assert moved >= 4 * len(names)  # A and B of two layers per adapter at least, heads too
    for name in names:
        for key in ("loss", "grad_norm", "lr"):
            assert_close(histories[name][key], alone_histories[name][key], 2e-5, 2e-6, f"{name} {key}")
        assert len(histories[name]["loss"]) == ADAPTERS[name][1].max_steps
        assert trainer.trainers[name].global_step == ADAPTERS[name][1].max_steps


def test_each_adapter_evaluates_and_logs_on_its_own():
    weights = make_weights()
    names = ["a", "c"]
    model = build(names, weights)
    data = {name: task_data(20 + i, 11) for i, name in enumerate(names)}
    tasks = [AdapterTask(name, data[name], ADAPTERS[name][1], eval_data=data[name]) for name in names]
    trainer = MultiAdapterTrainer(model, tasks)
    trainer.train()
    for name in names:
        history = trainer.histories[name]
        assert history["eval_step"][-1] == ADAPTERS[name][1].max_steps
        model.set_adapter(name)
        model.eval()
        logits = model(data[name]["x"])
        accuracy = float((logits.argmax(-1) == data[name]["labels"]).mean())
        assert history["eval_accuracy"][-1] == pytest.approx(accuracy)


def test_multi_adapter_trainer_refuses_what_it_cannot_train():
    weights = make_weights()
    model = build(["a", "b"], weights)
    data = task_data(0, 8)
    cfg = ADAPTERS["a"][1]
    with pytest.raises(ValueError, match=r"'zz' is not an adapter of the model; it has \['a', 'b'\]"):
        MultiAdapterTrainer(model, [AdapterTask("zz", data, cfg)])
    with pytest.raises(ValueError, match="each adapter trains once"):
        MultiAdapterTrainer(model, [AdapterTask("a", data, cfg), AdapterTask("a", data, cfg)])
    model.add_adapter("drop", LoraConfig(r=2, lora_dropout=0.1, target_modules=["query"]))
    with pytest.raises(ValueError, match="lora_dropout=0.1"):
        MultiAdapterTrainer(model, [AdapterTask("drop", data, cfg)])
    model.add_adapter("biased", LoraConfig(r=2, bias="lora_only", target_modules=["query"]))
    with pytest.raises(ValueError, match="bias='lora_only'"):
        MultiAdapterTrainer(model, [AdapterTask("biased", data, cfg)])


def test_stack_batches_pads_token_arrays_and_refuses_ragged_floats():
    ids = stack_batches([{"ids": np.ones((2, 3), np.int64)}, {"ids": np.full((1, 5), 7, np.int64)}])["ids"]
    assert ids.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [7, 7, 7, 7, 7]]
    with pytest.raises(ValueError, match="'x' arrays have shapes"):
        stack_batches([{"x": np.ones((2, 3), np.float32)}, {"x": np.ones((2, 4), np.float32)}])
