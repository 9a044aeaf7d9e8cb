"""Adapter folders that survive upgrades: unknown config fields warn and load, unsupported variants are refused
naming the field, and the model card (README.md) is written as PEFT writes it."""
from __future__ import annotations

import json
import warnings

import pytest

from peftc.tuners import BoneConfig, LoraConfig, PeftModel, get_peft_model
from peftc.tuners.model_card import model_card_text
from tests.adapter_round_trips import perturb_trainable, sample_input
from tests.conftest import assert_close
from tests.lora_twins import TinyBert, make_weights


def _saved(tmp_path, rng, config):
    weights = make_weights()
    model = get_peft_model(TinyBert(weights), config)
    perturb_trainable(model, rng)
    model.save_pretrained(tmp_path)
    return weights, model


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("config", [LoraConfig(r=2, target_modules=["query"]),
                                    BoneConfig(r=2, target_modules=["query"])], ids=["lora", "miss"])
def test_unknown_config_fields_warn_naming_them_and_load(config, tmp_path, rng):
    weights, model = _saved(tmp_path, rng, config)
    _edit_config(tmp_path, lora_future_option=3, another_new_field={"a": 1})
    x = sample_input(rng)
    with pytest.warns(UserWarning, match=r"2 field\(s\) .* ignored .*\['another_new_field', 'lora_future_option'\]"):
        loaded = PeftModel.from_pretrained(TinyBert(weights), tmp_path)
    assert_close(loaded(x), model.eval()(x), rtol=0, atol=0, name="loaded despite unknown fields")
    # a dict handed to from_dict in code is still checked strictly
    with pytest.raises(ValueError, match="unknown .*Config fields \\['another_new_field', 'lora_future_option'\\]"):
        type(config).from_dict({**config.to_dict(), "lora_future_option": 3, "another_new_field": 1})
    with pytest.raises(ValueError, match="unknown must be one of"):
        type(config).from_dict(config.to_dict(), unknown="ignore")


def test_known_config_file_loads_without_a_warning(tmp_path, rng):
    weights, _ = _saved(tmp_path, rng, LoraConfig(r=2, target_modules=["query"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PeftModel.from_pretrained(TinyBert(weights), tmp_path)


@pytest.mark.parametrize("field, value", [("use_dora", True), ("layer_replication", [[0, 1]]),
                                          ("use_qalora", True)])
def test_variants_peftc_cannot_run_are_refused_naming_the_field(field, value, tmp_path, rng):
    weights, _ = _saved(tmp_path, rng, LoraConfig(r=2, target_modules=["query"]))
    _edit_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=f"adapter config sets {field}=.*not supported by peftc"):
        PeftModel.from_pretrained(TinyBert(weights), tmp_path)
    model = get_peft_model(TinyBert(weights), LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match=field):
        model.load_adapter(tmp_path, "second")
    assert list(model.peft_config) == ["default"]


def test_fan_in_fan_out_on_linear_layers_is_set_false_with_peft_warning(tmp_path, rng):
    # PEFT's rule: the flag follows the target's layout (True only on GPT-2's Conv1D), with a warning
    weights, _ = _saved(tmp_path, rng, LoraConfig(r=2, target_modules=["query"]))
    _edit_config(tmp_path, fan_in_fan_out=True)
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to True but the target module is `torch.nn.Linear`"):
        model = PeftModel.from_pretrained(TinyBert(weights), tmp_path)
    assert model.peft_config["default"].fan_in_fan_out is False


def test_model_card_has_peft_front_matter_and_the_config(tmp_path, rng):
    import huggingface_hub

    config = LoraConfig(r=2, target_modules=["query"], base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2")
    _saved(tmp_path, rng, config)
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.tags == ["lora"]
    assert '"r": 2' in card.text and "## Adapter config: `default`" in card.text


def test_model_card_without_a_known_base_model_omits_it(tmp_path, rng):
    import huggingface_hub

    _saved(tmp_path, rng, LoraConfig(r=2, target_modules=["query"]))
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None


def test_saving_again_keeps_a_users_card_text_and_keys(tmp_path, rng):
    import huggingface_hub

    (tmp_path / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\n---\n\n# My adapter\n\n"
                                        "Trained on WordNet glosses.\n")
    _saved(tmp_path, rng, LoraConfig(r=2, target_modules=["query"]))
    _saved(tmp_path, rng, LoraConfig(r=3, target_modules=["query"]))
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "peft"
    assert "Trained on WordNet glosses." in card.text
    assert card.text.count("## Adapter config: `default`") == 1 and '"r": 3' in card.text


def test_peft_saves_into_a_folder_with_our_card(tmp_path, rng, torch):
    import peft

    from tests.lora_twins import make_torch_twin

    _saved(tmp_path, rng, LoraConfig(r=2, target_modules=["query"]))
    theirs = peft.get_peft_model(make_torch_twin(torch, make_weights()), peft.LoraConfig(r=2, target_modules=["query"]))
    theirs.save_pretrained(str(tmp_path))
    text = (tmp_path / "README.md").read_text()
    assert "library_name: peft" in text and "## Adapter config: `default`" in text


def test_model_card_text_example_matches():
    lines = model_card_text({"default": LoraConfig(r=4)}, "bert-base-uncased").splitlines()
    assert lines[:3] == ["---", 'base_model: "bert-base-uncased"', "library_name: peft"]
