"""LoRA on the real MiniLM against torch + transformers + PEFT: one training step's loss and every
LoRA gradient, and adapter folders moving both ways between peftc and PEFT."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import LoraConfig, PeftModel, get_peft_model
from peftc.models import BertModel, SentenceClassifier, Tokenizer, minilm_path
from peftc.nn import CrossEntropyLoss
from peftc.random import Generator

from .conftest import assert_close

TEXTS = [
    "a member of the genus Canis that has been domesticated by man since prehistoric times",
    "move fast by using one's feet, with one foot off the ground at any given time",
    "a piece of furniture having a smooth flat top that is usually supported by one or more vertical legs",
    "any of various feelings of strong dislike",
    "the act of consuming food",
    "a container",
]
LABELS = np.array([0, 3, 1, 2, 4, 1], dtype=np.int64)
NUM_LABELS = 5


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def batch():
    enc = Tokenizer(minilm_path())(TEXTS)
    assert (enc["attention_mask"] == 0).any()
    return enc


def peftc_model(r: int = 8, alpha: float = 16.0, seed: int = 3) -> PeftModel:
    base = SentenceClassifier(BertModel.from_pretrained(minilm_path()), NUM_LABELS, generator=Generator(seed))
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["query", "value"], modules_to_save=["classifier"],
                        init_lora_weights=False)
    return get_peft_model(base, config, generator=Generator(seed + 1))


def torch_twin(torch, model: PeftModel):
    """transformers' BertModel with PEFT LoRA on query/value, mean pooling and a linear head, holding the
    same weights as the peftc model (LoRA factors and head copied over)."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = model.active_peft_config

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.AutoModel.from_pretrained(minilm_path(), add_pooling_layer=False)
            self.classifier = torch.nn.Linear(self.bert.config.hidden_size, NUM_LABELS)

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask[..., None].to(hidden.dtype)
            return self.classifier((hidden * m).sum(1) / m.sum(1))

    twin = peft.get_peft_model(Twin(), peft.LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha,
                                                       target_modules=["query", "value"],
                                                       modules_to_save=["classifier"]))
    ours = {k: p.data for k, p in model.named_trainable_parameters()}
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if not p.requires_grad:
                continue
            match = [k for k in ours if _same_param(k, name)]
            assert len(match) == 1, f"no unique peftc parameter for torch {name}: {match}"
            p.copy_(torch.from_numpy(ours[match[0]]))
    return twin


def _same_param(peftc_name: str, torch_name: str) -> bool:
    """base_model.model.bert.encoder.layer.0.attention.self.query.lora_A (peftc) ~ ...query.lora_A.default.weight."""
    t = torch_name.replace(".default", "").replace(".modules_to_save", "")
    p = peftc_name.replace(".modules_to_save", "")
    if ".lora_" in t:
        t = t.rsplit(".weight", 1)[0]
    return t == p


def test_minilm_lora_step_matches_torch_and_peft(batch, torch):
    model = peftc_model()
    twin = torch_twin(torch, model)
    model.eval()  # dropout off on both sides; gradients flow the same in eval mode
    twin.eval()

    loss_fn = CrossEntropyLoss()
    logits = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    loss = loss_fn.forward(logits, LABELS)
    model.backward(loss_fn.backward())

    t_logits = twin(torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"]))
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(LABELS))
    t_loss.backward()

    assert abs(loss - t_loss.item()) <= 1e-4 * abs(t_loss.item()), (loss, t_loss.item())
    torch_grads = {n: p.grad.numpy() for n, p in twin.named_parameters() if p.requires_grad}
    checked = 0
    for name, p in model.named_trainable_parameters():
        match = [n for n in torch_grads if _same_param(name, n)]
        assert len(match) == 1, name
        err = rel_err(p.grad, torch_grads[match[0]])
        assert err <= 1e-4, f"{name}: relative error {err:.2e}"
        checked += 1
    assert checked == 6 * 2 * 2 + 2  # lora_A and lora_B on query and value of 6 layers, plus the head


def test_peftc_adapter_folder_loads_in_peft_with_identical_outputs(batch, torch, tmp_path):
    model = peftc_model()
    model.eval()
    ours = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    model.save_pretrained(tmp_path / "adapter")
    peft = pytest.importorskip("peft")
    fresh = torch_twin(torch, peftc_model(seed=11))  # different weights until the folder is loaded
    twin = peft.PeftModel.from_pretrained(fresh.get_base_model(), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = twin(torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])).numpy()
    assert_close(ours, theirs, 1e-4, 1e-5, "logits")


def test_peft_adapter_folder_loads_in_peftc_with_identical_outputs(batch, torch, tmp_path):
    twin = torch_twin(torch, peftc_model(seed=5)).eval()
    with torch.no_grad():
        theirs = twin(torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])).numpy()
    twin.save_pretrained(str(tmp_path / "adapter"))
    base = SentenceClassifier(BertModel.from_pretrained(minilm_path()), NUM_LABELS, generator=Generator(99))
    model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    model.eval()
    ours = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    assert_close(ours, theirs, 1e-4, 1e-5, "logits")
    merged = model.merge_and_unload()
    assert_close(merged({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}), theirs,
                 1e-4, 1e-5, "logits after merge_and_unload")
