"""Character-level text corruptions, and TENT/EATA on the LayerNorm parameters of a tiny BERT classifier."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from peftc import functional as F
from peftc.data.text_corruptions import KINDS, SEVERITY_RATES, corrupt_text, corrupt_texts
from peftc.models import SentenceClassifier
from peftc.models.bert import BertConfig, BertModel
from peftc.random import Generator
from peftc.tta import EATA, TENT

from .test_tta_methods import assert_fisher_matches

TEXT = "a young person who makes things by hand, especially in 1990"


def test_text_corruption_is_seeded_and_zero_rate_is_identity():
    for kind in KINDS:
        a = corrupt_texts([TEXT, TEXT], kind, 4, seed=3)
        assert a == corrupt_texts([TEXT, TEXT], kind, 4, seed=3)
        assert a != corrupt_texts([TEXT, TEXT], kind, 4, seed=4) and a[0] != TEXT
        assert corrupt_text(TEXT, kind, 0.0, np.random.default_rng(0)) == TEXT


def test_delete_and_insert_change_the_length_by_the_rate_and_keep_non_letters():
    letters = sum(ch.isalpha() for ch in TEXT)
    count = int(round(SEVERITY_RATES[5] * letters))
    deleted = corrupt_texts([TEXT], "delete", 5)[0]
    inserted = corrupt_texts([TEXT], "insert", 5)[0]
    assert len(deleted) == len(TEXT) - count and len(inserted) == len(TEXT) + count
    keep = (lambda s: [ch for ch in s if not ch.isalpha()])
    assert keep(deleted) == keep(TEXT) == keep(inserted)


def test_swap_keeps_the_characters_and_substitute_keeps_the_length():
    swapped = corrupt_texts([TEXT], "swap", 5)[0]
    assert Counter(swapped) == Counter(TEXT) and swapped != TEXT
    sub = corrupt_texts([TEXT], "substitute", 5)[0]
    assert len(sub) == len(TEXT) and sum(a != b for a, b in zip(sub, TEXT)) > 0
    assert all(a == b for a, b in zip(sub, TEXT) if not b.isalpha())


def test_text_corruption_rejects_unknown_kind_and_severity():
    with pytest.raises(ValueError, match="unknown text corruption"):
        corrupt_texts([TEXT], "blur", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt_texts([TEXT], "swap", 6)


def _tiny_classifier(num_labels: int = 4) -> SentenceClassifier:
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                     max_position_embeddings=12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    rng = np.random.default_rng(0)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    state = {"embeddings.word_embeddings.weight": (rng.standard_normal((40, h)) * 0.5).astype(np.float32),
             "embeddings.position_embeddings.weight": (rng.standard_normal((12, h)) * 0.1).astype(np.float32),
             "embeddings.token_type_embeddings.weight": (rng.standard_normal((2, h)) * 0.1).astype(np.float32),
             "embeddings.LayerNorm.weight": np.ones(h, np.float32),
             "embeddings.LayerNorm.bias": np.zeros(h, np.float32)}
    shapes = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
              "attention.output.dense": (h, h), "intermediate.dense": (inter, h), "output.dense": (h, inter)}
    for i in range(cfg.num_hidden_layers):
        for name, shape in shapes.items():
            w = rng.standard_normal(shape) / np.sqrt(shape[1])
            state[f"encoder.layer.{i}.{name}.weight"] = w.astype(np.float32)
            state[f"encoder.layer.{i}.{name}.bias"] = np.zeros(shape[0], np.float32)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[f"encoder.layer.{i}.{ln}.weight"] = np.ones(h, np.float32)
            state[f"encoder.layer.{i}.{ln}.bias"] = np.zeros(h, np.float32)
    model = SentenceClassifier(BertModel.from_state_dict(cfg, state), num_labels, generator=Generator(1))
    model.classifier.weight.data *= 4.0  # confident enough that EATA's filter keeps some rows
    model.eval()
    return model


def _token_batch(rng, rows: int = 8) -> dict[str, np.ndarray]:
    ids = rng.integers(1, 40, (rows, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::3, 7:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_tent_on_a_text_classifier_trains_only_layernorm_affine_and_lowers_entropy(rng):
    model = _tiny_classifier()
    batch = _token_batch(rng)
    tent = TENT(model, lr=5e-2)
    names = {id(p): n for n, p in tent.model.named_parameters()}
    assert len(tent.params) == 2 * 5 and all("LayerNorm" in names[id(p)] for p in tent.params)
    before_state = {k: v.copy() for k, v in tent.model.state_dict().items()}
    ent0 = float(F.softmax_entropy_forward(tent.model.forward(batch))[0].mean())
    for _ in range(5):
        tent.forward_and_adapt(batch)
    ent1 = float(F.softmax_entropy_forward(tent.model.forward(batch))[0].mean())
    changed = {k for k, v in tent.model.state_dict().items() if not np.array_equal(before_state[k], v)}
    assert changed and all("LayerNorm" in k for k in changed)
    assert ent1 < ent0 - 1e-3 and tent.stats["samples"] == 40 and tent.stats["backward_samples"] == 40


def test_eata_on_a_text_classifier_takes_a_dict_fisher_batch_and_selects(rng):
    model = _tiny_classifier()
    batch = _token_batch(rng, 12)
    fisher_batch = _token_batch(rng, 8)
    eata = EATA(model, fisher_images=fisher_batch, num_classes=4, e0_factor=0.9, lr=1e-2, fisher_batch_size=4)
    assert_fisher_matches(eata, [{k: v[i:i + 4] for k, v in fisher_batch.items()} for i in (0, 4)])
    eata.forward_and_adapt(batch)
    assert eata.stats["samples"] == 12 and 0 < eata.stats["backward_samples"] <= 12
