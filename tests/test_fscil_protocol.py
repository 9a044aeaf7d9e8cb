"""The FSCIL protocol and the incremental-frozen baseline: metrics, prototypes, sessions, the learner's files."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.fscil import (FSCILConfig, FSCILLearner, PrototypeClassifier, Session, class_means, fscil_scores,
                         run_fscil)
from tests.fscil_toys import ToySplit, tiny_bert, tokenize

CONFIG = FSCILConfig(max_length=16, batch_size=8, base_epochs=8, learning_rate=5e-3, r=4, lora_alpha=8.0,
                     lora_dropout=0.0, eval_batch_size=16)


def test_scores_follow_the_definitions_on_a_hand_example():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # base 0, 1; session 1 brings 2; session 2 brings 3
    preds = [np.array([0, 1, 1, 1, 9, 9, 9, 9]), np.array([0, 0, 1, 2, 2, 9, 9, 9]),
             np.array([0, 0, 0, 1, 2, 2, 3, 3])]
    s = fscil_scores(preds, labels, base_classes=2, ways=1)
    assert s.per_session == (3 / 4, 4 / 6, 7 / 8)
    assert s.avg_acc == pytest.approx(np.mean([3 / 4, 4 / 6, 7 / 8]))
    assert s.pd == pytest.approx(3 / 4 - 7 / 8)
    assert (s.last_base, s.last_novel) == (3 / 4, 1.0)
    assert s.last_hm == pytest.approx(2 * 0.75 / 1.75)
    with pytest.raises(ValueError, match=r"predictions\[1\] has shape"):
        fscil_scores([preds[0], preds[1][:3]], labels, 2, 1)


def test_prototypes_are_means_of_unit_features_and_prediction_is_the_nearest_cosine():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = np.array([4, 4, 9, 9, 9, 4])
    p = class_means(x, y, np.array([9, 4]))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(p, [unit[y == 9].mean(0), unit[y == 4].mean(0)], rtol=1e-5, atol=1e-6)
    clf = PrototypeClassifier(5)
    clf.add(p, np.array([9, 4]))
    q = rng.standard_normal((7, 5)).astype(np.float32)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(clf.predict(q), np.array([9, 4])[cos.argmax(1)])
    with pytest.raises(ValueError, match=r"classes \[4\] already"):
        clf.add(p[:1], np.array([4]))


@pytest.fixture(scope="module")
def learned():
    split = ToySplit(seed=0)
    learner = FSCILLearner(tiny_bert(0), tokenize, config=CONFIG)
    run = run_fscil(learner, split)
    return learner, split, run


def test_the_baseline_learns_the_base_classes_and_scores_every_session(learned):
    learner, split, run = learned
    assert len(run.scores.per_session) == 1 + len(split.sessions)
    assert run.scores.per_session[0] > 0.6, run.scores  # 4 keyword classes, chance 0.25
    assert learner.classifier.classes.tolist() == list(range(8))
    assert not any(p.requires_grad for p in learner.model.parameters())


def test_novel_prototypes_are_the_mean_of_their_shots_and_base_prototypes_stay(learned):
    learner, split, _ = learned
    shots = split.sessions[1]
    feats = learner.features(shots.texts)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    for c in (6, 7):
        k = int(np.flatnonzero(learner.classifier.classes == c)[0])
        np.testing.assert_allclose(learner.classifier.prototypes[k], unit[shots.labels == c].mean(0), atol=1e-5)
    base = class_means(learner.features(split.base_train.texts), split.base_train.labels, np.arange(4))
    np.testing.assert_allclose(learner.classifier.prototypes[:4], base, atol=1e-5)


def test_bad_sessions_are_refused_with_the_reason(learned):
    learner, split, _ = learned
    texts = ["key9 mark9 filler1"] * 5
    with pytest.raises(ValueError, match=r"classes \[3\] were already seen"):
        learner.add_session(Session(texts, np.full(5, 3)))
    with pytest.raises(ValueError, match=r"exactly 5 shots, got \{9: 4\}"):
        learner.add_session(Session(texts[:4], np.full(4, 9)))
    with pytest.raises(ValueError, match="empty"):
        learner.add_session(Session([], np.zeros(0, np.int64)))
    with pytest.raises(ValueError, match="parallel"):
        Session(texts, np.full(4, 9))
    fresh = FSCILLearner(tiny_bert(0), tokenize, config=CONFIG)
    with pytest.raises(ValueError, match="0..C-1"):
        fresh.fit_base(Session(texts + texts, np.array([0] * 5 + [2] * 5)))


def test_save_and_load_give_the_same_predictions(learned, tmp_path):
    learner, split, run = learned
    learner.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "prototypes.safetensors").is_file()
    again = FSCILLearner.from_pretrained(tiny_bert(0), tmp_path, tokenize)
    np.testing.assert_array_equal(again.predict(split.test.texts), run.predictions[-1])
    np.testing.assert_array_equal(again.classifier.classes, learner.classifier.classes)


def test_eval_features_skip_padding_and_match_the_padded_forward(learned):
    learner, split, _ = learned
    texts = split.test.texts[:12]  # glosses of different lengths: the batch carries padding
    tok = tokenize(texts)
    assert not tok["attention_mask"].all()
    net = learner.network
    net.train()  # no dropout in the tiny model: the padded forward computes the same function
    try:
        padded = net.pooled(tok["input_ids"], tok["attention_mask"])
    finally:
        net.eval()
    np.testing.assert_allclose(learner.features(texts), padded, rtol=1e-4, atol=1e-5)
