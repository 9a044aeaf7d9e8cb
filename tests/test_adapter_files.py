"""Adapter folders: peftc <-> peftc and peftc <-> PEFT give identical outputs; bad files fail clearly."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from peftc.io import load_file, save_file
from peftc.tuners import LoraConfig, PeftModel, get_peft_model
from tests.adapter_round_trips import (check_files_load_in_peft, check_files_load_in_peftc, perturb_trainable,
                                        perturb_trainable_torch, sample_input)
from tests.lora_twins import TinyBert, make_torch_twin, make_weights

CASES = {
    "query_value_head": dict(r=2, lora_alpha=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    "rank_alpha_patterns": dict(r=3, lora_alpha=6, target_modules=["query", "value", "dense"],
                                rank_pattern={"layer.1.attention.self.value": 2, "output.dense": 4},
                                alpha_pattern={"value": 2, r"layer\.0\.intermediate\.dense": 9}),
    "rslora_regex": dict(r=4, lora_alpha=3, use_rslora=True, target_modules=r".*layer\.1\..*(key|dense)"),
    "all_linear_layers": dict(r=2, target_modules="all-linear", modules_to_save=["classifier"]),
    "layers_to_transform": dict(r=2, target_modules=["key", "dense"], layers_to_transform=[1], layers_pattern="layer",
                                exclude_modules=["output.dense"]),
    "lora_only_bias": dict(r=2, target_modules=["query", "value"], bias="lora_only", lora_bias=True),
    "all_bias": dict(r=2, target_modules=["query"], bias="all", modules_to_save=["classifier"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_save_then_load_gives_identical_outputs(case, tmp_path, rng):
    weights = make_weights()
    model = get_peft_model(TinyBert(weights), LoraConfig(**CASES[case]))
    perturb_trainable(model, rng)
    x = sample_input(rng)
    y = model.eval()(x)
    model.save_pretrained(tmp_path)
    loaded = check_files_load_in_peftc(tmp_path, weights, x, y, case, exact=True)
    assert loaded.get_nb_trainable_parameters()[0] == 0 and not loaded.training
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_peftc_files_load_in_peft_with_identical_outputs(case, tmp_path, rng, torch):
    weights = make_weights()
    model = get_peft_model(TinyBert(weights), LoraConfig(**CASES[case]))
    perturb_trainable(model, rng)
    x = sample_input(rng)
    y = model.eval()(x)
    model.save_pretrained(tmp_path)
    check_files_load_in_peft(tmp_path, weights, x, y, case, torch)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_files_load_in_peftc_with_identical_outputs(case, tmp_path, rng, torch):
    import peft

    weights = make_weights()
    theirs = peft.get_peft_model(make_torch_twin(torch, weights), peft.LoraConfig(**CASES[case]))
    perturb_trainable_torch(theirs, torch)
    x = sample_input(rng)
    with torch.no_grad():
        yt = theirs.eval()(torch.from_numpy(x)).numpy()
    theirs.save_pretrained(str(tmp_path))
    check_files_load_in_peftc(tmp_path, weights, x, yt, case)


def test_saved_file_has_peft_keys_shapes_and_metadata(tmp_path):
    import safetensors

    model = get_peft_model(TinyBert(make_weights()), LoraConfig(r=2, target_modules=["value"], lora_bias=True,
                                                                rank_pattern={"layer.1.attention.self.value": 3},
                                                                modules_to_save=["classifier"]))
    model.save_pretrained(tmp_path)
    with safetensors.safe_open(tmp_path / "adapter_model.safetensors", framework="numpy") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        assert fh.metadata() == {"format": "pt"}
    p = "base_model.model.encoder.layer"
    assert shapes == {f"{p}.0.attention.self.value.lora_A.weight": (2, 6),
                      f"{p}.0.attention.self.value.lora_B.weight": (6, 2),
                      f"{p}.0.attention.self.value.lora_B.bias": (6,),
                      f"{p}.1.attention.self.value.lora_A.weight": (3, 6),
                      f"{p}.1.attention.self.value.lora_B.weight": (6, 3),
                      f"{p}.1.attention.self.value.lora_B.bias": (6,),
                      "base_model.model.classifier.weight": (3, 6), "base_model.model.classifier.bias": (3,)}
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["inference_mode"] is True


def test_from_pretrained_is_trainable_keeps_adapter_trainable(tmp_path):
    weights = make_weights()
    get_peft_model(TinyBert(weights), LoraConfig(r=2, target_modules=["query"])).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(TinyBert(weights), tmp_path, is_trainable=True)
    assert loaded.get_nb_trainable_parameters()[0] == 2 * (2 * 6 + 6 * 2) and loaded.training


def _saved(tmp_path, **kwargs):
    weights = make_weights()
    get_peft_model(TinyBert(weights), LoraConfig(**{"r": 2, "target_modules": ["query"], **kwargs})
                   ).save_pretrained(tmp_path)
    return weights


def test_truncated_or_corrupt_weights_file_is_a_clear_error(tmp_path):
    weights = _saved(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        PeftModel.from_pretrained(TinyBert(weights), tmp_path)
    path.write_bytes(b"\xff" * 40)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        PeftModel.from_pretrained(TinyBert(weights), tmp_path)


def test_rank_mismatch_names_the_key_and_both_shapes(tmp_path):
    weights = _saved(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["r"] = 4
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'base_model\.model\.encoder\.layer\.0\.attention\.self\.query\.lora_A\."
                                         r"weight' has shape \(2, 6\), expected \(4, 6\)"):
        PeftModel.from_pretrained(TinyBert(weights), tmp_path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    weights = _saved(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.encoder.layer.1.attention.self.query.lora_B.weight"
    tensors["base_model.model.encoder.layer.1.attention.self.query.lora_B.weightx"] = tensors.pop(key)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \['base_model.*lora_B\.weight'\], "
                                         r"1 unexpected key\(s\) \['.*weightx'\]"):
        PeftModel.from_pretrained(TinyBert(weights), tmp_path)


def test_non_float32_tensors_are_refused(tmp_path):
    import safetensors.numpy

    weights = _saved(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = {k: v.astype(np.float16) for k, v in load_file(path).items()}
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="dtype F16; peftc reads float32"):
        PeftModel.from_pretrained(TinyBert(weights), tmp_path)
    with pytest.raises(TypeError, match="float32"):
        save_file({"a": np.zeros(3)}, tmp_path / "x.safetensors")


def test_missing_folder_or_files_are_clear_errors(tmp_path):
    weights = make_weights()
    with pytest.raises(FileNotFoundError, match="adapter folder not found"):
        PeftModel.from_pretrained(TinyBert(weights), tmp_path / "nope")
    _saved(tmp_path)
    os.remove(tmp_path / "adapter_model.safetensors")
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        PeftModel.from_pretrained(TinyBert(weights), tmp_path)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import safetensors.numpy

    path = tmp_path / "t.safetensors"
    save_file({"a": np.ones(3, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_file({"a": np.ones(3, np.float32), "b": "not an array"}, path)

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a header")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_file({"a": np.zeros(3, np.float32)}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["t.safetensors"]
