"""LoraConfig: PEFT's defaults, validation errors naming the field, JSON round trips, PEFT's own files."""
from __future__ import annotations

import dataclasses
import json

import pytest

from peftc.tuners import LoraConfig

FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "use_rslora", "bias", "lora_bias",
          "modules_to_save", "init_lora_weights", "rank_pattern", "alpha_pattern", "layers_to_transform",
          "layers_pattern", "task_type", "base_model_name_or_path", "inference_mode")


def test_config_defaults_match_peft(torch):
    import peft

    ours, theirs = LoraConfig(), peft.LoraConfig()
    for name in FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name


@pytest.mark.parametrize("kwargs, field", [
    ({"r": 0}, "r"), ({"r": -2}, "r"), ({"r": 2.5}, "r"), ({"r": True}, "r"),
    ({"lora_alpha": float("nan")}, "lora_alpha"), ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"lora_dropout": -0.1}, "lora_dropout"), ({"bias": "some"}, "bias"),
    ({"target_modules": 3}, "target_modules"), ({"exclude_modules": [1]}, "exclude_modules"),
    ({"modules_to_save": "classifier"}, "modules_to_save"), ({"init_lora_weights": "pissa"}, "init_lora_weights"),
    ({"rank_pattern": {"query": 0}}, "rank_pattern"), ({"alpha_pattern": {"query": "x"}}, "alpha_pattern"),
    ({"layers_to_transform": [0, -1]}, "layers_to_transform"), ({"task_type": "SEQ"}, "task_type"),
    ({"use_rslora": 1}, "use_rslora"),
    ({"target_modules": "query", "layers_to_transform": [0]}, "layers_to_transform"),
    ({"target_modules": ["query"], "layers_pattern": "layer"}, "layers_pattern"),
])
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LoraConfig(**kwargs)


def test_config_unknown_field_in_dict_is_an_error():
    with pytest.raises(ValueError, match="unknown LoraConfig field 'rank'"):
        LoraConfig.from_dict({"peft_type": "LORA", "rank": 4})


def test_config_unsupported_peft_feature_is_an_error():
    with pytest.raises(ValueError, match="use_dora"):
        LoraConfig.from_dict({"peft_type": "LORA", "use_dora": True})
    with pytest.raises(ValueError, match="peft_type 'IA3'"):
        LoraConfig.from_dict({"peft_type": "IA3"})


def test_config_dict_round_trip_keeps_every_field():
    cfg = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], use_rslora=True,
                     bias="lora_only", modules_to_save=["classifier"], rank_pattern={"layer.1.attention.self.value": 2},
                     alpha_pattern={"value": 3.0}, layers_to_transform=[0, 1], layers_pattern="layer",
                     task_type="SEQ_CLS", base_model_name_or_path="all-MiniLM-L6-v2")
    again = LoraConfig.from_dict(json.loads(cfg.to_json_string()))
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_config_written_keys_are_all_known_to_peft(tmp_path, torch):
    import peft

    LoraConfig(r=4, target_modules=["query"], rank_pattern={"query": 2}).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    known = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    assert set(data) <= known, set(data) - known
    assert data["peft_type"] == "LORA" and data["rank_pattern"] == {"query": 2}
    loaded = peft.PeftConfig.from_pretrained(str(tmp_path))
    assert loaded.r == 4 and set(loaded.target_modules) == {"query"}


def test_config_reads_a_file_written_by_peft(tmp_path, torch):
    import peft

    theirs = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["query", "value"], use_rslora=True,
                             rank_pattern={"value": 2}, alpha_pattern={"query": 5}, modules_to_save=["classifier"],
                             task_type="SEQ_CLS")
    theirs.save_pretrained(str(tmp_path))
    ours = LoraConfig.from_pretrained(tmp_path)
    assert (ours.r, ours.lora_alpha, ours.use_rslora, ours.task_type) == (4, 12, True, "SEQ_CLS")
    assert sorted(ours.target_modules) == ["query", "value"] and ours.modules_to_save == ["classifier"]
    assert ours.rank_pattern == {"value": 2} and ours.alpha_pattern == {"query": 5}


def test_config_missing_or_corrupt_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        LoraConfig.from_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"r": 4,')
    with pytest.raises(ValueError, match="not valid JSON"):
        LoraConfig.from_pretrained(tmp_path)
