"""Data-free distillation on the text side: the teacher and the student on input embeddings (the same logits as
on token ids, input gradients by finite differences, padding ignored), the text anchors, AF-STip in embedding
space, migration with embedded examples, and the guarantee that the data-free text arm never reads WordNet."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from peftc.distill import AFSTipConfig, KDConfig, afstip_distill
from peftc.distill.migrate import MigrationConfig, migrate_to_new_class
from peftc.distill.pseudo import perturb
from peftc.distill.teacher import teacher_logits
from peftc.distill.text import EmbeddingClassifier, TextStudent, embed_tokens, token_anchors, truncated_bert
from peftc.models.classifier import SentenceClassifier
from peftc.random import Generator

from .benchmark_scripts import load_benchmark
from .conftest import assert_close
from .fscil_toys import CLS, SEP, VOCAB, tiny_bert, tokenize

TEXTS = ["alpha beta gamma delta", "beta", "gamma delta alpha beta epsilon zeta eta", "eta zeta"]
WORDS = np.arange(3, VOCAB)  # the toy vocabulary's ordinary tokens


def _teacher(classes: int = 3) -> EmbeddingClassifier:
    clf = SentenceClassifier(tiny_bert(0), classes, generator=Generator(1))
    clf.classifier.weight.data *= 4.0  # confident enough for the threshold and the anchors
    return EmbeddingClassifier(clf)


def _student(classes: int = 3, fusion: bool = True, seed: int = 2) -> TextStudent:
    return TextStudent(truncated_bert(tiny_bert(5), 1), classes, fusion=fusion, memory_slots=4, seed=seed)


def _anchors(t: EmbeddingClassifier, per_class: int = 4) -> np.ndarray:
    return token_anchors(t, 3, length=8, per_class=per_class, steps=30, lr=0.1, vocab_ids=WORDS, cls_id=CLS,
                         sep_id=SEP)[0]


@pytest.mark.parametrize("make", [_teacher, lambda: _student(fusion=False), lambda: _student(fusion=True)])
def test_embedded_tokens_give_the_logits_of_the_token_ids(make):
    model = make()
    model.eval()
    batch = tokenize(TEXTS)
    table = tiny_bert(0).embeddings.word_embeddings.weight.data
    if isinstance(model, TextStudent):
        table = model.bert.embeddings.word_embeddings.weight.data
    assert_close(model.forward(embed_tokens(table, batch)), model.forward(batch), 1e-6, 1e-6, "logits")


@pytest.mark.parametrize("make", [_teacher, lambda: _student(fusion=False), lambda: _student(fusion=True)])
def test_input_gradient_matches_finite_differences_and_ignores_the_padding(make, rng):
    model = make()
    model.eval()
    x = embed_tokens(tiny_bert(3).embeddings.word_embeddings.weight.data, tokenize(TEXTS))
    mask = x["attention_mask"]
    w = rng.standard_normal((len(TEXTS), 3)).astype(np.float32)
    model.forward(x)
    dx = model.backward(w)
    assert dx.shape == x["inputs_embeds"].shape and not dx[mask == 0].any()

    def f(e):
        return float((model.forward({"inputs_embeds": e, "attention_mask": mask}).astype(np.float64) * w).sum())

    # the padded positions change nothing the model says
    noisy = x["inputs_embeds"] + (mask == 0)[..., None] * rng.standard_normal(dx.shape).astype(np.float32)
    assert f(noisy) == pytest.approx(f(x["inputs_embeds"]), abs=1e-5)
    for _ in range(3):
        v = rng.standard_normal(dx.shape).astype(np.float32)
        eps = 3e-3  # small against the curvature, large against float32 rounding
        num = (f(x["inputs_embeds"] + eps * v) - f(x["inputs_embeds"] - eps * v)) / (2 * eps)
        ana = float((dx.astype(np.float64) * v).sum())
        assert abs(num - ana) <= 0.01 * abs(ana) + 1e-3, (num, ana)


def test_student_keeps_its_word_table_frozen_and_takes_the_first_blocks():
    bert = tiny_bert(5)
    s = TextStudent(truncated_bert(bert, 1), 3)
    assert len(s.bert.encoder.layer) == 1 and s.bert.encoder.layer[0] is bert.encoder.layer[0]
    assert not s.bert.embeddings.word_embeddings.weight.requires_grad
    with pytest.raises(ValueError, match="blocks"):
        truncated_bert(bert, 3)


def test_token_anchors_are_framed_and_make_the_teacher_predict_their_class():
    t = _teacher()
    table = t.word_embeddings.copy()
    anchors, labels = token_anchors(t, 3, length=8, per_class=4, steps=30, lr=0.1, vocab_ids=WORDS, cls_id=CLS,
                                    sep_id=SEP)
    assert anchors.shape == (12, 8, table.shape[1]) and (t.word_embeddings == table).all()
    assert (teacher_logits(t, anchors).argmax(1) == labels).mean() >= 0.9
    start, _ = token_anchors(t, 3, length=8, per_class=4, steps=0, vocab_ids=WORDS, cls_id=CLS, sep_id=SEP)
    assert (start[:, 0] == table[CLS]).all() and (start[:, -1] == table[SEP]).all()
    with pytest.raises(ValueError, match="vocab_ids"):
        token_anchors(t, 3, length=4, vocab_ids=np.array([VOCAB]))


@pytest.mark.parametrize("fusion", [False, True])
def test_text_afstip_student_learns_to_agree_with_the_teacher(fusion):
    t = _teacher()
    anchors = _anchors(t)
    s = _student(fusion=fusion)
    probe = perturb(anchors, 0.2, 60, np.random.default_rng(9))
    target = teacher_logits(t, probe).argmax(1)
    before = (teacher_logits(s, probe).argmax(1) == target).mean()
    cfg = AFSTipConfig(sigma=0.2, steps=50, batch_size=16, lr=1e-2, kd=KDConfig(tau=2.0, lambda_cls=0.5),
                       pixel_range=None)
    h = afstip_distill(t, s, 3, anchors.shape[1:], cfg, centres=anchors)
    after = (teacher_logits(s, probe).argmax(1) == target).mean()
    assert after >= 0.95 and after > before + 0.2 and h["loss"][-1] < h["loss"][0]


def test_text_migration_learns_the_new_class_and_keeps_the_old_ones():
    t = _teacher()
    anchors = _anchors(t)
    s = _student(fusion=True)
    afstip_distill(t, s, 3, anchors.shape[1:], AFSTipConfig(sigma=0.2, steps=50, batch_size=16, lr=1e-2,
                                                             kd=KDConfig(tau=2.0, lambda_cls=0.5), pixel_range=None),
                   centres=anchors)
    probe = perturb(anchors, 0.2, 60, np.random.default_rng(9))
    old_target = teacher_logits(t, probe).argmax(1)
    new = tokenize(["zebra quokka", "quokka zebra yak", "yak zebra", "zebra yak quokka okapi", "okapi quokka"])
    shots = embed_tokens(s.bert.embeddings.word_embeddings.weight.data, new)
    migrate_to_new_class(s, t, shots, anchors, MigrationConfig(steps=40, new_per_batch=6, pseudo_per_batch=18,
                                                               sigma=0.2, lr=1e-2))
    s.eval()
    assert s.head.out_features == 4
    assert (s.forward(tokenize(["quokka okapi zebra", "yak quokka"])).argmax(1) == 3).all()
    assert (teacher_logits(s, probe).argmax(1) == old_target).mean() >= 0.8


def test_migration_batch_holds_the_new_examples_then_the_pseudo_samples_padded_to_one_length(rng):
    from peftc.distill.migrate import _join

    new = {"inputs_embeds": rng.standard_normal((2, 5, 3)).astype(np.float32),
           "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])}
    pseudo = rng.standard_normal((3, 4, 3)).astype(np.float32)
    batch = _join(new, pseudo)
    x, m = batch["inputs_embeds"], batch["attention_mask"]
    assert x.shape == (5, 5, 3) and m.tolist() == [[1] * 5, [1, 1, 0, 0, 0]] + [[1, 1, 1, 1, 0]] * 3
    assert (x[:2] == new["inputs_embeds"]).all() and (x[2:, :4] == pseudo).all() and not x[2:, 4].any()
    with pytest.raises(ValueError, match="pseudo-samples"):
        _join(new, pseudo[..., :2])


def test_data_free_text_arm_never_reads_wordnet(monkeypatch):
    import peftc.data.wordnet as wn
    import peftc.data.wordnet_job as job

    bench = load_benchmark("datafree_kd")

    def refuse(*args, **kwargs):
        raise AssertionError("the data-free text arm read WordNet")

    for module, name in ((wn, "load_wordnet_glosses"), (job, "load_wordnet_glosses"), (job, "load_splits"),
                         (bench, "text_splits")):
        monkeypatch.setattr(module, name, refuse)
    s = bench.Settings(**{**bench.QUICK, "text_anchor_length": 6})
    t = _teacher()
    base = truncated_bert(tiny_bert(5), 1)
    vocab = {"vocab_ids": WORDS, "cls_id": CLS, "sep_id": SEP}
    pools: dict = {}
    for fusion in (False, True):
        student = bench.train_text_arm("afstip", 0.5, t, None, s, fusion, 0, lambda: copy.deepcopy(base), vocab, 3,
                                       pools)
        assert student.forward(pools["text_anchors"]).shape == (3, 3)
