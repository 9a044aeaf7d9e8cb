"""PromptSRC on the MiniLM dual encoder and the WordNet base-to-novel protocol: determinism, what
trains, the zero-shot path, and the class split."""
from __future__ import annotations

import os

import numpy as np
import pytest

from peftc import functional as F
from peftc.data.wordnet import CLASS_DESCRIPTIONS, CLASS_NAMES, DEFAULT_ROOT, NUM_CLASSES
from peftc.models import BertModel, Tokenizer, minilm_path
from peftc.prompt import METHODS, TEXT_TEMPLATES, PromptSRCConfig, PromptSRCDualEncoder, label_text
from peftc.prompt.protocol import base_novel_split, harmonic_mean, make_protocol

LABELS = [0, 2, 10]  # noun.Tops, noun.animal, noun.food
TEXTS = ["a domesticated carnivorous mammal that barks", "a large feline of forests in Asia",
         "a dish of meat and vegetables cooked slowly", "bread baked in a loaf", "an entity that exists",
         "anything that has existence"]
Y = np.array([2, 2, 10, 10, 0, 0], dtype=np.int64)
TINY_RUN = dict(label_depth=2, input_depth=2, epochs=2, batch_size=2, gpa=(1.5, 1.0), lr=0.05)


@pytest.fixture(scope="module")
def parts():
    model = BertModel.from_pretrained(minilm_path())
    tok = Tokenizer(minilm_path(), 32)
    texts = [label_text(n, d) for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    variants = [[label_text(n, d, t) for t in TEXT_TEMPLATES[:3]] for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    return model, tok, texts, variants


def trained(parts, **overrides):
    model, tok, texts, variants = parts
    enc = PromptSRCDualEncoder(model, tok, texts, variants, PromptSRCConfig(**{**TINY_RUN, **overrides}))
    history = enc.fit(TEXTS, Y, np.array(LABELS))
    return enc, history


def test_promptsrc_training_is_deterministic(parts):
    a, ha = trained(parts)
    b, hb = trained(parts)
    for pa, pb in zip(a.prompt_params(), b.prompt_params()):
        assert np.array_equal(pa.data, pb.data)
    assert ha == hb
    c, _ = trained(parts, seed=1)
    assert not np.array_equal(a.prompt_params()[0].data, c.prompt_params()[0].data)


def test_promptsrc_trains_only_prompts_and_leaves_encoder_unchanged(parts):
    model = parts[0]
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    enc, history = trained(parts)
    init = PromptSRCDualEncoder(*parts, PromptSRCConfig(**TINY_RUN))
    assert all(not np.array_equal(p.data, q.data) for p, q in zip(enc.prompt_params(), init.prompt_params()))
    assert all(np.array_equal(before[n], p.data) and p.grad is None for n, p in model.named_parameters())
    assert {"ce", "text_l1", "input_l1", "kl", "total"} <= set(history[0])
    assert [h["epoch"] for h in history] == [1, 2]


def test_coop_preset_trains_only_label_layer0(parts):
    enc, history = trained(parts, **{k: v for k, v in METHODS["coop"].items()})
    params = enc.prompt_params()
    assert len(params) == 1 and params[0] is enc.label_branch.prompts and params[0].shape[0] == 1
    assert all(h["kl"] == 0.0 and h["text_l1"] == 0.0 for h in history)


def test_zero_shot_prediction_uses_frozen_features(parts):
    enc = PromptSRCDualEncoder(*parts, PromptSRCConfig(**TINY_RUN))
    pred = enc.predict(TEXTS, np.array(LABELS), zero_shot=True)
    u = enc.frozen_features(TEXTS)
    v = enc.frozen_features([parts[2][c] for c in LABELS])
    assert np.array_equal(pred, np.array(LABELS)[np.argmax(u @ v.T, axis=1)])
    assert set(pred) <= set(LABELS)


def test_base_novel_split_is_fixed_disjoint_and_covers_all_classes():
    base, novel = base_novel_split(NUM_CLASSES, 0)
    b2, n2 = base_novel_split(NUM_CLASSES, 0)
    assert np.array_equal(base, b2) and np.array_equal(novel, n2)
    assert len(base) == 21 and len(novel) == 20 and not set(base) & set(novel)
    assert sorted(set(base) | set(novel)) == list(range(NUM_CLASSES))
    assert not np.array_equal(base, base_novel_split(NUM_CLASSES, 1)[0])


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.48 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0


@pytest.mark.skipif(not os.path.isfile(os.path.join(os.environ.get("PEFTC_WORDNET_DIR") or DEFAULT_ROOT, "data.noun")),
                    reason="WordNet (Debian wordnet-base) not installed")
def test_protocol_takes_k_shots_of_base_classes_only():
    from peftc.data.wordnet import load_wordnet_glosses

    pd = make_protocol(load_wordnet_glosses(), shots=4, seed=3, eval_per_class=5)
    counts = pd.train_base.class_counts()
    assert set(np.flatnonzero(counts)) == set(pd.base) and (counts[pd.base] == 4).all()
    assert (pd.train_all.class_counts() == 4).all()
    assert not set(pd.test.ids) & set(pd.train_all.ids)
    again = make_protocol(load_wordnet_glosses(), shots=4, seed=3, eval_per_class=5)
    assert again.train_all.ids == pd.train_all.ids and again.test.ids == pd.test.ids
    assert pd.validation is None
    with_val = make_protocol(load_wordnet_glosses(), shots=4, seed=3, eval_per_class=5, val_per_class=2)
    assert (with_val.validation.class_counts() == 2).all() and with_val.test.ids == pd.test.ids
    assert not set(with_val.validation.ids) & (set(pd.test.ids) | set(pd.train_all.ids))


def test_label_targets_average_raw_pooled_features_over_templates(parts):
    model, tok, texts, variants = parts
    enc = PromptSRCDualEncoder(model, tok, texts, variants, PromptSRCConfig(**TINY_RUN))
    for c in (0, 17):
        b = tok(variants[c])
        hidden = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        pooled = F.mean_pool_forward(hidden, b["attention_mask"])
        mean = pooled.mean(axis=0)
        np.testing.assert_allclose(enc.label_targets[c], mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-5)
    single = PromptSRCDualEncoder(model, tok, texts, variants, PromptSRCConfig(**TINY_RUN, text_diversity=False))
    np.testing.assert_allclose(single.label_targets[:3], enc.frozen_features(texts[:3]), rtol=1e-4, atol=1e-5)
    assert np.abs(single.label_targets - enc.label_targets).max() > 1e-3


def test_stop_epoch_trains_the_first_epochs_of_the_full_schedule_and_reports_each(parts):
    from peftc.prompt import lr_at_epoch

    seen = []
    enc, history = trained(parts, epochs=3, stop_epoch=2, gpa=None)
    full, full_history = trained(parts, epochs=3, gpa=None)
    model, tok, texts, variants = parts
    cfg = PromptSRCConfig(**{**TINY_RUN, "epochs": 3, "stop_epoch": 2, "gpa": None})
    again = PromptSRCDualEncoder(model, tok, texts, variants, cfg)
    again.fit(TEXTS, Y, np.array(LABELS), on_epoch_end=lambda e, m: seen.append((e, m.prompt_params()[0].data.copy())))
    assert [h["epoch"] for h in history] == [1, 2] and [e for e, _ in seen] == [1, 2]
    rates = [h["lr"] for h in history]
    assert rates == [lr_at_epoch(cfg, 0), lr_at_epoch(cfg, 1)] == [h["lr"] for h in full_history[:2]]
    assert history == full_history[:2]  # the same steps as the full run, cut after epoch 2
    np.testing.assert_array_equal(seen[-1][1], enc.prompt_params()[0].data)
    assert not np.array_equal(seen[0][1], seen[1][1])
    with pytest.raises(ValueError, match="stop_epoch"):
        PromptSRCConfig(epochs=3, stop_epoch=4)


def test_gpa_of_a_stopped_run_weighs_only_the_epochs_trained(parts):
    from peftc.prompt import gaussian_epoch_weights

    snaps = []
    model, tok, texts, variants = parts
    cfg = PromptSRCConfig(**{**TINY_RUN, "epochs": 3, "stop_epoch": 2, "gpa": (1.5, 1.0)})
    enc = PromptSRCDualEncoder(model, tok, texts, variants, cfg)
    enc.fit(TEXTS, Y, np.array(LABELS),
            on_epoch_end=lambda e, m: snaps.append([p.data.copy() for p in m.prompt_params()]))
    w = gaussian_epoch_weights(2, 1.5, 1.0)
    for i, p in enumerate(enc.prompt_params()):
        np.testing.assert_allclose(p.data, w[0] * snaps[0][i] + w[1] * snaps[1][i], rtol=1e-6, atol=1e-7)


def test_logit_scale_and_the_no_l1_ablation():
    from peftc.prompt import PAPER_LOGIT_SCALE, with_logit_scale

    cfg = with_logit_scale(PromptSRCConfig(**METHODS["no_l1"]), PAPER_LOGIT_SCALE)
    assert cfg.weights.scale == 100.0 and cfg.weights.text_l1 == 0.0 and cfg.weights.input_l1 == 0.0
    assert cfg.weights.kl == PromptSRCConfig().weights.kl and cfg.gpa == PromptSRCConfig().gpa
    with pytest.raises(ValueError, match="scale"):
        with_logit_scale(cfg, 0.0)
