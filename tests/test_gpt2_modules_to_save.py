"""modules_to_save on GPT-2's Conv1D layers: adapter files hold Hugging Face's (in, out) layout, as PEFT writes
it, and folders round-trip through PEFT both ways (torch + transformers + peft as the oracle)."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from peftc import LoraConfig, PeftModel, get_peft_model
from peftc.models import GPT2LMHeadModel

from .conftest import assert_close
from .test_gpt2_model import H, hf_folder, hf_model, ids  # noqa: F401  (fixtures)

KEY = "base_model.model.transformer.h.0.mlp.c_fc.weight"  # c_fc: (in H, out 4H), not square
KWARGS = dict(r=4, lora_alpha=8, target_modules=["c_attn"], modules_to_save=["c_fc"], fan_in_fan_out=True,
              init_lora_weights=False)


def _trained(model, rng) -> None:
    """Move every trainable array (LoRA factors, the c_fc copies) away from its start, as training would."""
    for _, p in model.named_parameters():
        if p.requires_grad:
            p.data += (0.2 * rng.standard_normal(p.shape)).astype(np.float32)


def test_peftc_folder_holds_the_hf_layout_and_loads_in_peft(hf_folder, ids, tmp_path, torch, rng):
    import peft

    ours = get_peft_model(GPT2LMHeadModel.from_pretrained(hf_folder), LoraConfig(**KWARGS))
    _trained(ours, rng)
    copy = ours.get_base_model().transformer.h[0].mlp.c_fc.modules_to_save
    ours.save_pretrained(tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert tensors[KEY].shape == (H, 4 * H)
    np.testing.assert_array_equal(tensors[KEY], copy.hf_weight())
    back = peft.PeftModel.from_pretrained(hf_model(hf_folder, torch), tmp_path / "a")
    with torch.no_grad():
        got = back(input_ids=torch.tensor(ids)).logits.numpy()
    want = ours.eval()(ids)
    assert_close(got, want, 1e-4, 1e-5, "peftc folder in peft")
    assert np.abs(want - GPT2LMHeadModel.from_pretrained(hf_folder)(ids)).max() > 1e-3  # the copies act

    again = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_folder), tmp_path / "a")
    assert_close(again(ids), want, 1e-6, 1e-6, "peftc folder in peftc")


def test_peft_folder_with_a_conv1d_copy_loads_in_peftc(hf_folder, ids, tmp_path, torch):
    import peft

    ref = peft.get_peft_model(hf_model(hf_folder, torch), peft.LoraConfig(**KWARGS))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
        want = ref.eval()(input_ids=torch.tensor(ids)).logits.numpy()
    ref.save_pretrained(tmp_path / "p")
    loaded = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_folder), tmp_path / "p")
    assert_close(loaded(ids), want, 1e-4, 1e-5, "peft folder in peftc")
    saved = load_file(str(tmp_path / "p" / "adapter_model.safetensors"))[KEY]
    np.testing.assert_array_equal(loaded.get_base_model().transformer.h[0].mlp.c_fc.modules_to_save.hf_weight(),
                                  saved)


def test_a_file_in_peftc_s_own_layout_is_refused_naming_the_key(hf_folder, tmp_path, rng):
    from peftc.io.safetensors import save_file

    ours = get_peft_model(GPT2LMHeadModel.from_pretrained(hf_folder), LoraConfig(**KWARGS))
    ours.save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors[KEY] = np.ascontiguousarray(tensors[KEY].T)  # (4H, H): the transposed layout
    save_file(tensors, str(path), {"format": "pt"})
    with pytest.raises(ValueError, match="c_fc"):
        PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_folder), tmp_path / "a")
