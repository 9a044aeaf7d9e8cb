"""save_gguf: llama.cpp GGUF LoRA files read back with gguf.GGUFReader rebuild peftc's merged weights.

The rebuild does what llama.cpp does with the file: check each pair's shapes as its adapter loader
does (A ne = [IC, R], B ne = [R, OC] against the base weight's ne = [IC, OC]), then add
``alpha / R * B A`` (``B A`` when alpha is 0), with alpha from ``adapter.lora.alpha`` and R from
B's shape.
"""
from __future__ import annotations

import copy
import os
import sys

import numpy as np
import pytest

from peftc import Generator
from peftc.models import SentenceClassifier
from peftc.nn import Linear, Module, ReLU
from peftc.tuners import BoneConfig, HydraConfig, LoraConfig, SoraConfig, get_peft_model
from peftc.tuners.gguf_export import TENSOR_MAPS, gguf_lora_tensors, save_gguf
from tests.conftest import f32
from tests.test_encoder_modules import random_bert

gguf = pytest.importorskip("gguf")

ALL_LINEAR = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
CASES = {
    "lora": dict(r=4, lora_alpha=8),
    "rslora": dict(r=4, lora_alpha=6, use_rslora=True),
    "patterns": dict(r=4, lora_alpha=8, rank_pattern={"query": 2, "intermediate.dense": 6},
                     alpha_pattern={"value": 3.0, "layer.1.output.dense": 20.0}),
    "rslora_patterns": dict(r=3, lora_alpha=5, use_rslora=True, rank_pattern={"key": 5},
                            alpha_pattern={"attention.output.dense": 0.5}),
    "zero_alpha": dict(r=2, lora_alpha=0),
}


def _model(rng, classifier: bool = True, **config):
    bert = random_bert(rng, dropout=0.0)
    base = SentenceClassifier(bert, 3, generator=Generator(5)) if classifier else bert
    config.setdefault("target_modules", ALL_LINEAR)
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, **config), generator=Generator(7))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data[...] = f32(rng, *p.shape, scale=0.25)  # merged weights of order 1, as after training
    return model


def _read(path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (np.array(t.data), [int(n) for n in t.shape]) for t in reader.tensors}
    return fields, tensors


def _rebuild(path, base_weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{GGUF weight name: W + alpha / R * B A} as llama.cpp computes it from the file."""
    fields, tensors = _read(path)
    alpha = fields["adapter.lora.alpha"]
    out = {}
    for name, w in base_weights.items():
        (a, a_ne), (b, b_ne) = tensors.pop(name + ".lora_a"), tensors.pop(name + ".lora_b")
        w_ne = [w.shape[1], w.shape[0]]
        assert a_ne[0] == w_ne[0] and b_ne[1] == w_ne[1], (name, a_ne, b_ne, w_ne)  # "has incorrect shape"
        assert a_ne[1] == b_ne[0], (name, a_ne, b_ne)                                 # "lora_a ... not transposed"
        assert a.dtype == b.dtype == np.float32
        rank = b_ne[0]
        scale = np.float32(alpha) / np.float32(rank) if alpha else np.float32(1.0)
        out[name] = w.astype(np.float64) + float(scale) * (b.astype(np.float64) @ a.astype(np.float64))
    assert not tensors, f"tensors without a base weight: {sorted(tensors)}"
    return out


def _expected_names(prefix: str, layers: int = 2) -> dict[str, str]:
    table = {"attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
             "attention.output.dense": "attn_output", "intermediate.dense": "ffn_up", "output.dense": "ffn_down"}
    return {f"{prefix}encoder.layer.{i}.{hf}": f"blk.{i}.{g}.weight" for i in range(layers) for hf, g in table.items()}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("classifier", [True, False], ids=["classifier", "bare_bert"])
def test_gguf_file_rebuilds_the_merged_weights(case, classifier, tmp_path, rng):
    model = _model(rng, classifier=classifier, **CASES[case])
    path = tmp_path / "adapter.gguf"
    names = save_gguf(model, path)
    prefix = "bert." if classifier else ""
    assert names == _expected_names(prefix)

    fields, tensors = _read(path)
    assert fields == {"general.architecture": "bert", "general.type": "adapter", "adapter.type": "lora",
                      "adapter.lora.alpha": float(CASES[case]["lora_alpha"])}
    assert len(tensors) == 2 * len(names)

    layers = {n: model.get_base_model().get_submodule(n) for n in names}
    base = {names[n]: layer.base.weight.data.copy() for n, layer in layers.items()}
    scales = {layer.scaling for layer in layers.values()}
    if case != "lora" and case != "zero_alpha":
        assert len(scales) > 1 or CASES[case].get("use_rslora"), "the case must exercise a non-alpha/r scale"
    merged = copy.deepcopy(model).merge_and_unload()
    rebuilt = _rebuild(path, base)
    for module, gguf_name in names.items():
        want = merged.get_submodule(module).weight.data
        err = np.max(np.abs(rebuilt[gguf_name] - want))
        assert err <= 1e-6, f"{module} -> {gguf_name}: max abs error {err:.3g}"
        if case == "zero_alpha":
            assert np.array_equal(rebuilt[gguf_name], base[gguf_name])


def test_plain_lora_is_written_as_the_official_converter_writes_it(tmp_path, rng):
    model = _model(rng, **CASES["lora"])
    save_gguf(model, tmp_path / "a.gguf")
    _, tensors = _read(tmp_path / "a.gguf")
    for module, gguf_name in _expected_names("bert.").items():
        layer = model.get_base_model().get_submodule(module)
        assert np.array_equal(tensors[gguf_name + ".lora_a"][0], layer.lora_A.data)
        assert np.array_equal(tensors[gguf_name + ".lora_b"][0], layer.lora_B.data)


def test_gguf_rebuild_detects_a_lost_scale(tmp_path, rng):
    """The oracle itself: a file whose B lacks the rsLoRA factor is more than 1e-6 off."""
    model = _model(rng, **CASES["rslora"])
    lora = gguf_lora_tensors(model)
    writer = gguf.GGUFWriter(tmp_path / "bad.gguf", "bert")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", lora.alpha)
    for module, name in lora.modules.items():
        layer = model.get_base_model().get_submodule(module)
        writer.add_tensor(name + ".lora_a", layer.lora_A.data)
        writer.add_tensor(name + ".lora_b", layer.lora_B.data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    base = {name: model.get_base_model().get_submodule(m).base.weight.data for m, name in lora.modules.items()}
    merged = copy.deepcopy(model).merge_and_unload()
    rebuilt = _rebuild(tmp_path / "bad.gguf", base)
    errors = [np.max(np.abs(rebuilt[n] - merged.get_submodule(m).weight.data)) for m, n in lora.modules.items()]
    assert min(errors) > 1e-3


def test_peft_model_method_writes_the_same_file(tmp_path, rng):
    model = _model(rng, **CASES["patterns"])
    assert model.save_gguf(tmp_path / "m.gguf") == save_gguf(model, tmp_path / "f.gguf")
    assert (tmp_path / "m.gguf").read_bytes() == (tmp_path / "f.gguf").read_bytes()


def test_tensor_map_agrees_with_gguf_py_for_every_bert_linear(rng):
    """gguf-py's TensorNameMap (what llama.cpp's converter uses) names every Linear of peftc's BertModel as we do."""
    bert = random_bert(rng, 0.0)
    reference = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, bert.config.num_hidden_layers)
    ours = TENSOR_MAPS["bert"]
    assert gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT] == ours.arch
    linears = [n for n, m in bert.named_modules() if isinstance(m, Linear)]
    assert len(linears) == 6 * bert.config.num_hidden_layers
    for name in linears:
        assert ours.gguf_name(name) == reference.get_name(name + ".weight", try_suffixes=(".weight",)), name


def test_minilm_adapter_names_match_the_checkpoint_as_llama_cpp_converts_it(tmp_path, rng):
    """On all-MiniLM-L6-v2: every adapted weight is named as gguf-py names that weight of the checkpoint file,
    and the file rebuilds the merged weights."""
    from safetensors import safe_open

    from peftc.models import BertModel, minilm_path
    try:
        folder = minilm_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    with safe_open(os.path.join(folder, "model.safetensors"), "np") as f:
        keys = set(f.keys())
    bert = BertModel.from_pretrained(folder)
    model = get_peft_model(SentenceClassifier(bert, 41, generator=Generator(1)),
                           LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules=ALL_LINEAR,
                                      rank_pattern={"layer.5.output.dense": 4}, init_lora_weights=False),
                           generator=Generator(2))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data[...] = f32(rng, *p.shape, scale=0.01)
    names = save_gguf(model, tmp_path / "minilm.gguf")
    reference = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, bert.config.num_hidden_layers)
    assert len(names) == 36
    for module, gguf_name in names.items():
        key = module.removeprefix("bert.") + ".weight"  # the converter strips "bert." as well
        assert key in keys, key
        assert gguf_name == reference.get_name(key, try_suffixes=(".weight",)), module
    base = {g: model.get_base_model().get_submodule(m).base.weight.data.copy() for m, g in names.items()}
    merged = model.merge_and_unload()
    rebuilt = _rebuild(tmp_path / "minilm.gguf", base)
    for module, gguf_name in names.items():
        err = np.max(np.abs(rebuilt[gguf_name] - merged.get_submodule(module).weight.data))
        assert err <= 1e-6, f"{module}: max abs error {err:.3g}"


def test_tensor_map_names_only_whole_block_paths():
    bert = TENSOR_MAPS["bert"]
    assert bert.gguf_name("encoder.layer.11.attention.self.value") == "blk.11.attn_v.weight"
    for path in ("encoder.layer.x.attention.self.value", "encoder.layer.0.attention.self.value.extra",
                 "xencoder.layer.0.output.dense", "encoder.layer.0.attention.self", "classifier"):
        assert bert.gguf_name(path) is None, path


# -- what the format cannot hold ----------------------------------------------------------------------
class TinyMLP(Module):
    def __init__(self) -> None:
        self.fc1, self.act, self.fc2 = Linear(4, 6, generator=Generator(0)), ReLU(), Linear(6, 2, generator=Generator(1))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_save_gguf_rejects_what_llama_cpp_cannot_load(tmp_path, rng):
    path = tmp_path / "x.gguf"
    cases = [
        (lambda: random_bert(rng, 0.0), TypeError, "needs a peftc PeftModel, got BertModel"),
        (lambda: get_peft_model(random_bert(rng, 0.0), BoneConfig(r=2, target_modules=["query"])), TypeError,
         "BoneConfig"),
        (lambda: get_peft_model(random_bert(rng, 0.0), SoraConfig(r=2, target_modules=["query"])), TypeError,
         "SoraConfig"),
        (lambda: get_peft_model(random_bert(rng, 0.0), HydraConfig(r=2, target_modules=["query"])), TypeError,
         "HydraConfig"),
        (lambda: _model(rng, target_modules=["query", "classifier"]), ValueError,
         r"\['classifier'\] have no llama.cpp 'bert' tensor name"),
        (lambda: _model(rng, modules_to_save=["classifier"]), ValueError, "skip_modules_to_save=True"),
        (lambda: _model(rng, lora_bias=True), ValueError, "LoRA bias"),
        (lambda: _model(rng, bias="lora_only"), ValueError, "bias='lora_only'"),
        (lambda: get_peft_model(TinyMLP(), LoraConfig(r=2, target_modules=["fc1"])), ValueError,
         r"no network llama.cpp's GGUF LoRA format knows; supported: BertModel \(bert\)"),
    ]
    for build, exc, match in cases:
        with pytest.raises(exc, match=match):
            save_gguf(build(), path)
    merged = _model(rng)
    merged.merge_adapter()
    with pytest.raises(RuntimeError, match="unmerge_adapter"):
        save_gguf(merged, path)
    assert not os.listdir(tmp_path)


def test_skip_modules_to_save_exports_the_lora_layers(tmp_path, rng):
    model = _model(rng, modules_to_save=["classifier"], **CASES["patterns"])
    names = save_gguf(model, tmp_path / "a.gguf", skip_modules_to_save=True)
    assert names == _expected_names("bert.")


def test_save_gguf_without_the_gguf_package_names_the_install(tmp_path, rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match=r"pip install 'peftc\[gguf\]'"):
        save_gguf(_model(rng), tmp_path / "a.gguf")
    assert not os.listdir(tmp_path)


def test_failed_gguf_write_keeps_the_previous_file(tmp_path, rng, monkeypatch):
    path = tmp_path / "a.gguf"
    save_gguf(_model(rng), path)
    good = path.read_bytes()

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_gguf(_model(rng, **CASES["rslora"]), path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["a.gguf"]


# -- GPT-2: the Conv1D layers ------------------------------------------------------------------------
GPT2_CASES = {
    "lora": dict(r=4, lora_alpha=8),
    "rslora_patterns": dict(r=3, lora_alpha=5, use_rslora=True, rank_pattern={"c_fc": 5},
                            alpha_pattern={"attn.c_proj": 0.5, "h.1.mlp.c_proj": 12.0}),
}
GPT2_TABLE = {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def _gpt2_model(rng, **config):
    from peftc.models import GPT2Config, GPT2LMHeadModel

    base = GPT2LMHeadModel.from_config(GPT2Config(vocab_size=23, n_positions=8, n_embd=8, n_layer=2, n_head=2), seed=3)
    config.setdefault("target_modules", ["c_attn", "c_proj", "c_fc"])
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, fan_in_fan_out=True, **config),
                           generator=Generator(7))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data[...] = f32(rng, *p.shape, scale=0.25)
    return model


@pytest.mark.parametrize("case", sorted(GPT2_CASES))
def test_gpt2_gguf_file_rebuilds_the_merged_conv1d_weights(case, tmp_path, rng):
    """Base tensors as llama.cpp's convert_hf_to_gguf writes GPT-2's (the Hugging Face (IC, OC) Conv1D weight,
    transposed); the rebuilt weights, transposed back, equal the merged model's Hugging Face state dict."""
    model = _gpt2_model(rng, **GPT2_CASES[case])
    hf_base = model.get_base_model()
    original = {f"transformer.h.{i}.{hf}": copy.deepcopy(hf_base.get_submodule(f"transformer.h.{i}.{hf}").base)
                for i in range(2) for hf in GPT2_TABLE}
    names = save_gguf(model, tmp_path / "gpt2.gguf")
    assert names == {f"transformer.h.{i}.{hf}": f"blk.{i}.{g}.weight" for i in range(2) for hf, g in GPT2_TABLE.items()}
    reference = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, 2)
    for module, gguf_name in names.items():  # gguf-py names the checkpoint's weight as we do
        assert gguf_name == reference.get_name(module + ".weight", try_suffixes=(".weight",)), module
    fields, _ = _read(tmp_path / "gpt2.gguf")
    assert fields["general.architecture"] == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2] == "gpt2"

    base = {names[m]: np.ascontiguousarray(conv.hf_weight().T) for m, conv in original.items()}
    scales = {model.get_base_model().get_submodule(m).scaling for m in names}
    assert len(scales) > 1 or case == "lora"
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    rebuilt = _rebuild(tmp_path / "gpt2.gguf", base)
    for module, gguf_name in names.items():
        want = merged[module + ".weight"]  # Hugging Face's (IC, OC) layout
        assert want.shape == (original[module].in_features, original[module].out_features)
        err = np.max(np.abs(rebuilt[gguf_name].T - want))
        assert err <= 1e-6, f"{module} -> {gguf_name}: max abs error {err:.3g}"


def test_gpt2_lm_head_has_no_gguf_lora_name(tmp_path, rng):
    with pytest.warns(UserWarning, match="fan_in_fan_out"):  # lm_head is a Linear: PEFT's rule sets it False
        model = _gpt2_model(rng, target_modules=["c_attn", "lm_head"])
    with pytest.raises(ValueError, match=r"\['lm_head'\] have no llama.cpp 'gpt2' tensor name"):
        save_gguf(model, tmp_path / "x.gguf")
    assert not os.listdir(tmp_path)
