"""target_modules matching: peftc's rules give PEFT's answers on BERT module names."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.nn import Linear
from peftc.tuners import LoraConfig, check_target_module_exists, get_pattern_key, get_peft_model
from peftc.tuners.matching import find_target_modules, resolve_target_modules
from tests.lora_twins import TinyBert, make_weights

BERT_NAMES = ["", "bert", "bert.embeddings", "bert.embeddings.word_embeddings", "bert.embeddings.LayerNorm",
              "bert.encoder", "bert.encoder.layer"]
for _i in range(3):
    _p = f"bert.encoder.layer.{_i}"
    BERT_NAMES += [_p, f"{_p}.attention", f"{_p}.attention.self", f"{_p}.attention.self.query",
                   f"{_p}.attention.self.key", f"{_p}.attention.self.value", f"{_p}.attention.output",
                   f"{_p}.attention.output.dense", f"{_p}.attention.output.LayerNorm", f"{_p}.intermediate",
                   f"{_p}.intermediate.dense", f"{_p}.output", f"{_p}.output.dense", f"{_p}.output.LayerNorm"]
BERT_NAMES += ["bert.pooler", "bert.pooler.dense", "classifier", "dense"]

CASES = [
    {"target_modules": ["query", "value"]},
    {"target_modules": ["dense"]},
    {"target_modules": ["output.dense"]},
    {"target_modules": ["bert.encoder.layer.1.attention.self.key", "classifier"]},
    {"target_modules": ["self.query", "quer"]},
    {"target_modules": r".*\.(query|value)"},
    {"target_modules": r"query"},
    {"target_modules": r".*layer\.[02]\..*dense"},
    {"target_modules": ["dense"], "exclude_modules": ["output.dense"]},
    {"target_modules": ["dense", "query"], "exclude_modules": r".*layer\.1\..*"},
    {"target_modules": ["query", "value"], "layers_to_transform": [0, 2]},
    {"target_modules": ["query", "value"], "layers_to_transform": 1},
    {"target_modules": ["query", "dense"], "layers_to_transform": [1], "layers_pattern": "layer"},
    {"target_modules": ["query", "dense"], "layers_to_transform": [0], "layers_pattern": ["blocks", "layer"]},
    {"target_modules": ["dense", "classifier"], "modules_to_save": ["classifier", "pooler"]},
    {"target_modules": r".*dense", "modules_to_save": ["intermediate"]},
]


@pytest.mark.parametrize("kwargs", CASES, ids=[str(i) for i in range(len(CASES))])
def test_matching_agrees_with_peft_check_target_module_exists(kwargs, torch):
    import peft
    from peft.tuners.tuners_utils import check_target_module_exists as peft_check

    ours, theirs = LoraConfig(**kwargs), peft.LoraConfig(**kwargs)
    for key in BERT_NAMES:
        assert bool(check_target_module_exists(ours, key)) == bool(peft_check(theirs, key)), key


@pytest.mark.parametrize("patterns", [["value"], ["layer.1.attention.self.value", "query"], [r"layer\.[01]\..*"],
                                      ["dense", "output.dense"], ["lue"]])
def test_pattern_keys_agree_with_peft_get_pattern_key(patterns, torch):
    from peft.utils import other

    for key in BERT_NAMES:
        assert get_pattern_key(patterns, key) == other.get_pattern_key(patterns, key), key


def _model():
    return TinyBert(make_weights())


def test_all_linear_targets_every_linear_but_the_classifier():
    names = resolve_target_modules(_model(), LoraConfig(target_modules="all-linear"))
    assert len(names) == 10 and "classifier" not in names
    assert "encoder.layer.1.intermediate.dense" in names


def test_rank_and_alpha_patterns_set_per_module_rank_and_scale():
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                     rank_pattern={"layer.1.attention.self.value": 2}, alpha_pattern={"value": 3})
    model = get_peft_model(_model(), cfg).get_base_model()
    v0, v1 = model.encoder.layer[0].attention.self.value, model.encoder.layer[1].attention.self.value
    q1 = model.encoder.layer[1].attention.self.query
    assert (v0.r, v0.scaling) == (4, 3 / 4) and (v1.r, v1.scaling) == (2, 3 / 2) and (q1.r, q1.scaling) == (4, 2.0)
    assert v1.lora_A.shape == (2, 6) and v1.lora_B.shape == (6, 2)


def test_rslora_scales_by_square_root_of_rank():
    model = get_peft_model(_model(), LoraConfig(r=4, lora_alpha=6, target_modules=["query"], use_rslora=True))
    assert model.get_base_model().encoder.layer[0].attention.self.query.scaling == pytest.approx(3.0)


def test_no_matching_module_is_a_clear_error():
    with pytest.raises(ValueError, match=r"target modules \['q_proj'\] not found.*encoder.layer.0"):
        get_peft_model(_model(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="not found"):
        get_peft_model(_model(), LoraConfig(target_modules=["query"], layers_to_transform=[7]))


def test_target_that_is_not_a_linear_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'encoder.layer.0.attention.self' is a _Node"):
        get_peft_model(_model(), LoraConfig(target_modules=r".*layer\.0\.attention\.self"))


def test_missing_target_modules_uses_model_type_default_or_says_so():
    model = _model()
    with pytest.raises(ValueError, match="target_modules is None"):
        get_peft_model(model, LoraConfig())
    model.config = {"model_type": "bert"}
    names = find_target_modules(model, LoraConfig(target_modules=resolve_target_modules(model, LoraConfig())))
    assert names == [f"encoder.layer.{i}.attention.self.{n}" for i in range(2) for n in ("query", "value")]


def test_injection_leaves_non_targets_as_plain_linears():
    model = get_peft_model(_model(), LoraConfig(target_modules=["query"])).get_base_model()
    assert type(model.encoder.layer[0].attention.self.key) is Linear
    assert type(model.classifier) is Linear
    assert np.isfinite(model(np.ones((2, 6), np.float32))).all()
