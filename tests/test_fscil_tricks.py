"""The bag of tricks on the FSCIL learner: text views, the network's combined gradient, each trick's effect,
the full bag end to end with its files."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from peftc.fscil import FSCILLearner, FSCILNetwork, FSCILObjective, Session, Tricks, run_fscil
from peftc.fscil.etf import simplex_etf
from peftc.fscil.views import chunk_rotation, mixed_class_texts, span_deletion
from peftc.random import Generator
from tests.fscil_toys import ToySplit, tiny_bert, tokenize
from tests.test_fscil_protocol import CONFIG

SMALL = dataclasses.replace(CONFIG, base_epochs=2, projection_dim=8, pseudo_classes=3, pseudo_per_class=6,
                            total_classes=8, ssl_epochs=1, subnet_steps=6, subnet_lr=5e-3)


def test_views_keep_the_special_tokens_and_the_rotation_is_a_cyclic_group():
    tok = tokenize(["a b c d e f g h", "x y", "p q r s"])  # interiors of 8, 2, 4 tokens
    ids, mask = tok["input_ids"], tok["attention_mask"]
    v_ids, v_mask = span_deletion(ids, mask, np.array([0.3, 0.9, 0.99]), fraction=0.3)
    for b in range(3):
        n, m = int(mask[b].sum()), int(v_mask[b].sum())
        assert v_ids[b, 0] == ids[b, 0] and v_ids[b, m - 1] == ids[b, n - 1]
        assert m == (n if n - 2 < 2 else n - max(1, int(np.ceil(0.3 * (n - 2)))))
        assert (v_ids[b, m:] == 0).all() and (v_mask[b, m:] == 0).all()
    k = np.array([1, 2, 3])
    r1, y1 = chunk_rotation(ids, mask, k)
    assert y1.tolist() == [1, -100, 3]  # "x y" has 2 interior tokens: no rotation label
    back, _ = chunk_rotation(r1, mask, (4 - k) % 4)
    np.testing.assert_array_equal(back[[0, 2]], ids[[0, 2]])
    assert sorted(r1[0].tolist()) == sorted(ids[0].tolist()) and (r1[0] != ids[0]).any()
    texts, labels = mixed_class_texts(["a b c d", "e f g h", "i j k l"], np.array([0, 1, 2]), 2, 3, 10, seed=0)
    assert labels.tolist() == [10, 10, 10, 11, 11, 11]
    assert all(len(t.split()) == 4 for t in texts)


def _net_and_batch():
    from peftc.tuners import LoraConfig, get_peft_model

    net = FSCILNetwork(tiny_bert(1), 5, projection_dim=6, pretext=True, deletion=0.3, generator=Generator(4))
    model = get_peft_model(net, LoraConfig(r=2, lora_alpha=4.0, target_modules=["query", "value"],
                                           modules_to_save=["classifier", "projector", "pretext_head"]),
                           generator=Generator(5))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data[...] = np.random.default_rng(6).standard_normal(p.shape).astype(np.float32) * 0.3
    batch = tokenize(["key1 filler3 filler4 mark1 filler5", "key2 mark2 filler1 filler2 filler7 filler8",
                      "key1 mark1 filler9", "key3 filler2 mark3 filler6 filler0"])
    return net, model, batch, np.array([1, 2, 1, 3])


def test_network_and_objective_gradient_matches_a_directional_difference():
    net, model, batch, y = _net_and_batch()
    objective = FSCILObjective(ce=1.0, supcon=0.7, temperature=0.5, etf=1.5, etf_targets=simplex_etf(5, 16),
                               align_classes=3, pretext=0.4)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def loss_at(offset):
        net.views.offset = offset  # the same views and rotations on every evaluation
        return objective.forward(model.forward(batch), y)

    start = net.views.offset
    loss_at(start)
    for p in params:
        p.grad_buffer().fill(0.0)
    model.backward(objective.backward())
    assert {"z", "feat", "pretext_logits", "logits"} <= set(objective.backward())
    rng = np.random.default_rng(0)
    direction = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    analytic = sum(float((p.grad.astype(np.float64) * d).sum()) for p, d in zip(params, direction))
    eps = 1e-2
    for p, d in zip(params, direction):
        p.data += eps * d
    up = loss_at(start)
    for p, d in zip(params, direction):
        p.data -= 2 * eps * d
    down = loss_at(start)
    for p, d in zip(params, direction):
        p.data += eps * d
    numeric = (up - down) / (2 * eps)
    assert abs(analytic - numeric) <= 2e-2 * abs(numeric) + 1e-3, (analytic, numeric)


def test_tricks_build_their_heads_and_pseudo_classes_widen_the_classifier():
    split = ToySplit(seed=1)
    learner = FSCILLearner(tiny_bert(0), tokenize, Tricks.only("supcon", "pretext", "pseudo_classes"), SMALL)
    learner.fit_base(Session.from_split(split.base_train))
    net = learner.network
    assert net.classifier.out_features == 4 + 3
    assert net.two_views and net.pretext
    assert learner.classifier.classes.tolist() == [0, 1, 2, 3]  # pseudo-classes get no prototype
    with pytest.raises(ValueError, match="unknown tricks"):
        Tricks.only("rotation")


def _lora(learner, block):
    return {n: p.data.copy() for n, p in learner.model.named_parameters()
            if ".lora_" in n and f"encoder.layer.{block}." in n}


def test_ssl_pretraining_moves_the_adapter_before_supervised_training():
    split = ToySplit(seed=2)
    ssl = FSCILLearner(tiny_bert(0), tokenize, Tricks.only("ssl"), dataclasses.replace(SMALL, base_epochs=0))
    ssl.fit_base(Session.from_split(split.base_train))
    plain = FSCILLearner(tiny_bert(0), tokenize, Tricks(), dataclasses.replace(SMALL, base_epochs=0))
    plain.fit_base(Session.from_split(split.base_train))
    moved = [np.abs(a - _lora(plain, 0)[n]).max() for n, a in _lora(ssl, 0).items()]
    assert max(moved) > 1e-4 and len(ssl.history_ssl) > 0


def test_subnet_tuning_moves_only_the_top_block_and_the_guard_holds_it_back():
    split = ToySplit(seed=3)
    drift = {}
    for guard in (0.0, 1e3):
        learner = FSCILLearner(tiny_bert(0), tokenize, Tricks.only("subnet"),
                               dataclasses.replace(SMALL, subnet_guard=guard))
        learner.fit_base(Session.from_split(split.base_train))
        low, top, base_protos = _lora(learner, 0), _lora(learner, 1), learner.classifier.prototypes.copy()
        learner.add_session(Session.from_split(split.sessions[0]))
        assert all(np.array_equal(a, _lora(learner, 0)[n]) for n, a in low.items())
        drift[guard] = max(np.abs(a - _lora(learner, 1)[n]).max() for n, a in top.items())
        np.testing.assert_array_equal(learner.classifier.prototypes[:4], base_protos)
        assert not any(p.requires_grad for p in learner.model.parameters())
    assert drift[0.0] > 1e-4 and drift[1e3] < 0.5 * drift[0.0], drift


def test_the_full_bag_runs_the_protocol_and_its_files_reload(tmp_path):
    split = ToySplit(seed=4)
    learner = FSCILLearner(tiny_bert(0), tokenize, Tricks.all(), SMALL)
    run = run_fscil(learner, split)
    assert len(run.scores.per_session) == 3 and 0.0 <= run.scores.avg_acc <= 1.0
    learner.save_pretrained(tmp_path)
    again = FSCILLearner.from_pretrained(tiny_bert(0), tmp_path, tokenize)
    assert again.tricks == Tricks.all()
    np.testing.assert_array_equal(again.predict(split.test.texts), run.predictions[-1])


def test_subnet_step_gradient_matches_a_directional_difference():
    from peftc.fscil.learner import subnet_step
    from peftc.nn.loss import CrossEntropyLoss

    net, model, batch, _ = _net_and_batch()
    targets = (simplex_etf(6, 16, seed=2) * 8.0).astype(np.float32)
    y = np.array([0, 5, 2, 2])
    params = [p for n, p in model.named_parameters() if ".lora_" in n]
    for p in params:
        p.grad_buffer().fill(0.0)
    loss_fn = CrossEntropyLoss()
    model.train()  # no dropout anywhere in this model; training mode keeps the backward caches
    subnet_step(net, batch, targets, y, loss_fn)
    rng = np.random.default_rng(1)
    direction = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    scale = np.float32(1.0 / np.sqrt(sum(float((d * d).sum()) for d in direction)))
    direction = [d * scale for d in direction]  # a unit step: the difference's third-order error stays small
    analytic = sum(float((p.grad.astype(np.float64) * d).sum()) for p, d in zip(params, direction))

    def loss_at(sign):
        for p, d in zip(params, direction):
            p.data += sign * 1e-2 * d
        out = loss_fn.forward(net.pooled(batch["input_ids"], batch["attention_mask"]) /
                              np.linalg.norm(net.pooled(batch["input_ids"], batch["attention_mask"]), axis=1,
                                             keepdims=True) @ targets.T, y)
        for p, d in zip(params, direction):
            p.data -= sign * 1e-2 * d
        return out

    numeric = (loss_at(1) - loss_at(-1)) / 2e-2
    assert abs(analytic - numeric) <= 1e-2 * abs(numeric) + 1e-4, (analytic, numeric)


def test_restore_rewinds_the_sessions_so_a_second_pass_repeats_the_first():
    from peftc.fscil import run_fscil

    split = ToySplit(seed=5)
    learner = FSCILLearner(tiny_bert(0), tokenize, Tricks.only("subnet"), SMALL)
    learner.fit_base(Session.from_split(split.base_train))
    state = learner.snapshot()
    first = run_fscil(learner, split, fit=False)
    assert len(learner.classifier.classes) == 8
    learner.restore(state)
    assert len(learner.classifier.classes) == 4
    second = run_fscil(learner, split, fit=False)
    for a, b in zip(first.predictions, second.predictions):
        np.testing.assert_array_equal(a, b)
