"""The GPT-2 decoder against transformers + PEFT on tiny random models written inside the test: logits, the
shifted LM loss, every gradient, LoRA gradients on the transposed Conv1D layers (fan_in_fan_out), adapter
folders both ways, merging, and the checkpoint written back."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from peftc import LoraConfig, PeftModel, get_peft_model
from peftc.models import GPT2Config, GPT2LMHeadModel
from peftc.nn import Conv1D

from .conftest import assert_close

V, NPOS, H, L, NH = 37, 16, 16, 2, 4
B, T = 3, 9
TARGETS = ["c_attn", "c_proj", "c_fc"]  # attn.c_proj and mlp.c_proj both match "c_proj"


def hf_config(dropout: float = 0.0):
    from transformers import GPT2Config as HFConfig

    return HFConfig(vocab_size=V, n_positions=NPOS, n_embd=H, n_layer=L, n_head=NH, resid_pdrop=dropout,
                    embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, torch):
    """A random GPT-2 from transformers (biases and LayerNorms randomised too), saved as safetensors."""
    from transformers import GPT2LMHeadModel as HFModel

    torch.manual_seed(0)
    model = HFModel(hf_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return folder


def hf_model(folder, torch):
    from transformers import GPT2LMHeadModel as HFModel

    return HFModel.from_pretrained(folder).eval()


@pytest.fixture
def ids(rng):
    return rng.integers(0, V, (B, T)).astype(np.int64)


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-30))


# ---- forward -----------------------------------------------------------------------------------------
def test_logits_and_loss_match_transformers(hf_folder, ids, torch):
    ref = hf_model(hf_folder, torch)
    ours = GPT2LMHeadModel.from_pretrained(hf_folder)
    with torch.no_grad():
        out = ref(torch.tensor(ids), labels=torch.tensor(ids))
    assert_close(ours(ids), out.logits.numpy(), 1e-4, 1e-5, "logits")
    assert ours.causal_lm_loss(ids) == pytest.approx(out.loss.item(), rel=1e-5)
    labels = ids.copy()
    labels[:, :4] = -100  # a prompt that does not count
    with torch.no_grad():
        masked = ref(torch.tensor(ids), labels=torch.tensor(labels)).loss.item()
    assert ours.causal_lm_loss(ids, labels) == pytest.approx(masked, rel=1e-5)
    assert abs(masked - out.loss.item()) > 1e-3  # the -100 labels change the loss


def test_padding_mask_leaves_real_tokens_as_an_unpadded_run(hf_folder, ids, torch):
    ref = hf_model(hf_folder, torch)
    ours = GPT2LMHeadModel.from_pretrained(hf_folder)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # right padding: causal attention never reads it from a real position
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = ours(ids, mask)
    assert_close(got[mask == 1], want[mask == 1], 1e-4, 1e-5, "real positions")
    assert_close(ours(ids[1:2, :6]), got[1:2, :6], 1e-5, 1e-6, "the sequence alone")


def test_the_model_depends_on_earlier_tokens_only(hf_folder, ids):
    ours = GPT2LMHeadModel.from_pretrained(hf_folder)
    changed = ids.copy()
    changed[:, 5] = (changed[:, 5] + 1) % V
    a, b = ours(ids), ours(changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert np.abs(a[:, 5:] - b[:, 5:]).min() > 0


# ---- backward ----------------------------------------------------------------------------------------
def test_every_gradient_matches_torch_autograd(hf_folder, ids, torch):
    ref = hf_model(hf_folder, torch).train()
    ours = GPT2LMHeadModel.from_pretrained(hf_folder).train()
    labels = ids.copy()
    labels[0, :3] = -100
    out = ref(torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    assert ours.causal_lm_loss(ids, labels) == pytest.approx(out.loss.item(), rel=1e-5)
    ours.causal_lm_loss_backward()
    theirs = {n: p.grad.numpy() for n, p in ref.named_parameters()}
    mine = dict(ours.named_parameters())
    assert set(mine) == set(theirs)  # lm_head is tied: listed once, as torch lists it
    for name, p in mine.items():
        conv = name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        want = theirs[name].T if conv else theirs[name]  # transformers' Conv1D weights are (in, out)
        assert rel_err(p.grad, want) < 2e-4, (name, rel_err(p.grad, want))


def test_tied_head_gets_both_gradients_in_one_buffer(hf_folder, ids):
    ours = GPT2LMHeadModel.from_pretrained(hf_folder).train()
    assert ours.lm_head.weight is ours.transformer.wte.weight
    ours.causal_lm_loss(ids)
    ours.causal_lm_loss_backward()
    both = ours.transformer.wte.weight.grad.copy()
    unused = np.setdiff1d(np.arange(V), ids)
    assert unused.size and np.abs(both[unused]).max() > 0  # the head's gradient reaches rows no input used
    ours.zero_grad()
    ours.transformer.wte.weight.requires_grad = True
    ours.lm_head.backward(np.zeros((B, T, V), np.float32))
    assert np.abs(ours.transformer.wte.weight.grad).max() == 0


# ---- LoRA on the transposed layers -------------------------------------------------------------------
def lora_pair(folder, torch, config_kwargs):
    import peft

    ours = get_peft_model(GPT2LMHeadModel.from_pretrained(folder), LoraConfig(**config_kwargs))
    ref = peft.get_peft_model(hf_model(folder, torch), peft.LoraConfig(**{**config_kwargs, "fan_in_fan_out": True}))
    # PEFT's random A, B into peftc's layers: both models then hold the same adapter
    theirs = {n: p for n, p in ref.named_parameters() if "lora_" in n}
    for name, p in ours.named_parameters():
        if "lora_" in name:
            key = name.replace("lora_A", "lora_A.default").replace("lora_B", "lora_B.default") + ".weight"
            p.data[...] = theirs[key].detach().numpy()
    return ours, ref


def test_lora_loss_and_gradients_match_peft(hf_folder, ids, torch):
    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="fan_in_fan_out")  # True on Conv1D: nothing to correct
        ours, ref = lora_pair(hf_folder, torch, {**kwargs, "fan_in_fan_out": True})
    ours.train()
    ref.train()
    out = ref(input_ids=torch.tensor(ids), labels=torch.tensor(ids))
    out.loss.backward()
    base = ours.get_base_model()
    assert base.causal_lm_loss(ids) == pytest.approx(out.loss.item(), rel=1e-5)
    base.causal_lm_loss_backward()
    theirs = {n: p.grad.numpy() for n, p in ref.named_parameters() if p.requires_grad}
    mine = dict(ours.named_trainable_parameters())
    assert len(mine) == len(theirs) == 2 * 3 * L + 2 * L  # A and B on c_attn, attn.c_proj, c_fc, mlp.c_proj
    for name, p in mine.items():
        key = name.replace("lora_A", "lora_A.default").replace("lora_B", "lora_B.default") + ".weight"
        assert rel_err(p.grad, theirs[key]) < 2e-4, (name, rel_err(p.grad, theirs[key]))


def test_fan_in_fan_out_false_on_conv1d_is_set_true_with_peft_warning(hf_folder):
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to False but the target module is `Conv1D`"):
        model = get_peft_model(GPT2LMHeadModel.from_pretrained(hf_folder), LoraConfig(r=2))
    assert model.peft_config["default"].fan_in_fan_out is True
    assert model.peft_config["default"].target_modules == ["c_attn"]  # PEFT's default for model_type gpt2
    assert isinstance(model.get_base_model().transformer.h[0].attn.c_attn.base, Conv1D)


def test_peft_folder_loads_in_peftc_and_peftc_folder_loads_in_peft(hf_folder, ids, tmp_path, torch):
    import peft

    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    ours, ref = lora_pair(hf_folder, torch, {**kwargs, "fan_in_fan_out": True})
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids)).logits.numpy()
    ref.save_pretrained(tmp_path / "from_peft")
    loaded = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_folder), tmp_path / "from_peft")
    assert loaded.peft_config["default"].fan_in_fan_out is True
    assert_close(loaded(ids), want, 1e-4, 1e-5, "peft folder in peftc")
    ours.save_pretrained(tmp_path / "from_peftc")
    assert json.loads((tmp_path / "from_peftc" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    back = peft.PeftModel.from_pretrained(hf_model(hf_folder, torch), tmp_path / "from_peftc")
    with torch.no_grad():
        got = back(input_ids=torch.tensor(ids)).logits.numpy()
    assert_close(got, ours(ids), 1e-4, 1e-5, "peftc folder in peft")
    assert rel_err(ours(ids), GPT2LMHeadModel.from_pretrained(hf_folder)(ids)) > 1e-3  # the adapter acts


def test_merge_and_unload_writes_the_checkpoint_peft_merging_gives(hf_folder, ids, tmp_path, torch):
    from transformers import GPT2LMHeadModel as HFModel

    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    ours, ref = lora_pair(hf_folder, torch, {**kwargs, "fan_in_fan_out": True})
    before = ours(ids)
    merged = ours.merge_and_unload()
    assert_close(merged(ids), before, 1e-4, 1e-5, "merged vs unmerged")
    state = merged.state_dict()
    theirs = {k: v.detach().numpy() for k, v in ref.merge_and_unload().state_dict().items() if k != "lm_head.weight"}
    assert set(state) == set(theirs)
    for key, value in theirs.items():
        assert_close(state[key], value, 1e-5, 1e-6, key)
    merged.save_pretrained(tmp_path / "merged")
    back = HFModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert_close(back(torch.tensor(ids)).logits.numpy(), before, 1e-4, 1e-5, "written checkpoint")
    with pytest.raises(TypeError, match="merge_and_unload"):
        get_peft_model(GPT2LMHeadModel.from_pretrained(hf_folder), LoraConfig(r=2, fan_in_fan_out=True)).get_base_model().state_dict()


# ---- construction and bad input ----------------------------------------------------------------------
def test_from_config_initialises_like_transformers_and_lists_each_parameter_once():
    cfg = GPT2Config(vocab_size=V, n_positions=NPOS, n_embd=H, n_layer=L, n_head=NH)
    model = GPT2LMHeadModel.from_config(cfg, seed=1)
    params = dict(model.named_parameters())
    assert "lm_head.weight" not in params and len(params) == 2 + 12 * L + 2
    assert sum(p.size for p in params.values()) - (V + NPOS) * H == cfg.num_non_embedding_parameters()
    w = params["transformer.wte.weight"].data
    assert abs(w.std() - 0.02) < 0.003
    proj = params["transformer.h.0.mlp.c_proj.weight"].data
    assert abs(proj.std() - 0.02 / np.sqrt(2 * L)) < 0.003
    assert np.all(params["transformer.h.0.attn.c_attn.bias"].data == 0)


def test_bad_input_names_the_argument(hf_folder, ids):
    model = GPT2LMHeadModel.from_pretrained(hf_folder)
    with pytest.raises(ValueError, match="outside"):
        model(np.full((1, 3), V, dtype=np.int64))
    with pytest.raises(ValueError, match="n_positions"):
        model(np.zeros((1, NPOS + 1), dtype=np.int64))
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.astype(np.int32))
    with pytest.raises(ValueError, match="labels"):
        model.causal_lm_loss(ids, ids[:, :-1].copy())
    with pytest.raises(ValueError, match="input"):
        model.backward(np.zeros((B, T, V), np.float32), dx=np.zeros((B, T), np.float32))
    with pytest.raises(ValueError, match="n_embd"):
        GPT2Config(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="activation_function"):
        GPT2Config(activation_function="relu")
    with pytest.raises(RuntimeError, match="before causal_lm_loss"):
        GPT2LMHeadModel.from_pretrained(hf_folder).causal_lm_loss_backward()


def test_checkpoint_with_a_missing_or_extra_tensor_is_refused(hf_folder):
    from safetensors.numpy import load_file

    state = load_file(str(hf_folder / "model.safetensors"))
    cfg = GPT2Config.from_json(hf_folder / "config.json")
    with pytest.raises(KeyError, match="h.1.mlp.c_fc.bias"):
        GPT2LMHeadModel.from_state_dict(cfg, {k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc.bias"})
    with pytest.raises(KeyError, match="does not use"):
        GPT2LMHeadModel.from_state_dict(cfg, {**state, "transformer.h.0.extra": state["transformer.ln_f.bias"]})
    with pytest.raises(ValueError, match="lm_head"):
        GPT2LMHeadModel.from_state_dict(cfg, {**state, "lm_head.weight": state["transformer.wte.weight"] + 1})
