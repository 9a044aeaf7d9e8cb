"""The FSCIL learner spends no work its numbers do not need: base training on the real tokens only equals the
padded training, a phase without SupCon runs no second view, and a learner differing only in session tricks
reuses a base training instead of repeating it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from peftc.fscil import FSCILLearner, FSCILNetwork, FSCILObjective, Session, Tricks, run_fscil
from peftc.fscil.etf import simplex_etf
from peftc.models.bert import BertModel
from peftc.random import Generator
from peftc.tuners import LoraConfig, get_peft_model
from tests.conftest import assert_close
from tests.fscil_toys import ToySplit, tiny_bert, tokenize
from tests.test_fscil_tricks import SMALL

BATCH = ["key1 filler3 filler4 mark1 filler5 filler6 filler7 filler8", "key2 mark2", "key1 mark1 filler9",
         "key3 filler2 mark3 filler6 filler0 filler1"]


def _padded_training(monkeypatch) -> None:
    """Make every training-mode BertModel forward run padded (the reference the packed step must equal)."""
    forward = BertModel.forward

    def padded(self, *args, skip_padding=None, **kwargs):
        return forward(self, *args, skip_padding=False if self.training else skip_padding, **kwargs)

    monkeypatch.setattr(BertModel, "forward", padded)


def _step(net, model, objective, labels, views_offset=None):
    """One training forward and backward on BATCH: (loss, {parameter name: gradient})."""
    model.train()
    model.zero_grad()
    if views_offset is not None:
        net.views.offset = views_offset
    loss = objective.forward(model.forward(tokenize(BATCH)), labels)
    model.backward(objective.backward())
    return loss, {n: p.grad.copy() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _net(dropout: float, projection_dim: int = 6, pretext: bool = True):
    net = FSCILNetwork(tiny_bert(1, dropout=dropout), 5, projection_dim=projection_dim, pretext=pretext,
                       deletion=0.3, generator=Generator(4))
    heads = ["classifier"] + (["projector"] if projection_dim else []) + (["pretext_head"] if pretext else [])
    model = get_peft_model(net, LoraConfig(r=2, lora_alpha=4.0, target_modules=["query", "value"],
                                           modules_to_save=heads), generator=Generator(5))
    rng = np.random.default_rng(6)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data[...] = rng.standard_normal(p.shape).astype(np.float32) * 0.3
    return net, model


OBJECTIVE = dict(ce=1.0, supcon=0.7, temperature=0.5, etf=1.5, etf_targets=simplex_etf(5, 16), align_classes=3,
                 pretext=0.4)


def test_base_training_step_on_real_tokens_equals_the_padded_step(monkeypatch):
    # hidden and attention dropout on: the packed step must draw the padded batch's masks at the real tokens
    net, model = _net(dropout=0.2)
    y = np.array([1, 2, 1, 3])
    loss, grads = _step(net, model, FSCILObjective(**OBJECTIVE), y)
    assert net.bert._packed is not None and net.bert._packed.count < net.bert._packed.positions  # it ran packed
    net2, model2 = _net(dropout=0.2)  # the same weights, views and dropout streams
    _padded_training(monkeypatch)
    loss2, grads2 = _step(net2, model2, FSCILObjective(**OBJECTIVE), y)
    assert net2.bert._packed is None
    assert loss == pytest.approx(loss2, rel=1e-5)
    assert grads.keys() == grads2.keys() and len(grads) > 0
    for n in grads:
        assert_close(grads[n], grads2[n], 1e-4, 1e-6, n)


def test_fit_base_on_real_tokens_gives_the_padded_prototypes(monkeypatch):
    split = ToySplit(seed=6)
    config = dataclasses.replace(SMALL, base_epochs=1)
    packed = FSCILLearner(tiny_bert(0, dropout=0.1), tokenize, Tricks.all().without("subnet"), config)
    packed.fit_base(Session.from_split(split.base_train))
    _padded_training(monkeypatch)
    padded = FSCILLearner(tiny_bert(0, dropout=0.1), tokenize, Tricks.all().without("subnet"), config)
    padded.fit_base(Session.from_split(split.base_train))
    assert_close(packed.classifier.prototypes, padded.classifier.prototypes, 1e-4, 1e-5, "base prototypes")


def test_a_phase_without_supcon_runs_no_second_view_and_keeps_its_gradient():
    # supcon weight 0: the second views' rows get a zero gradient, so leaving them out changes nothing
    objective = {**OBJECTIVE, "supcon": 0.0}
    y = np.array([1, 2, 1, 3])
    net, model = _net(dropout=0.0)
    start = net.views.offset
    loss, grads = _step(net, model, FSCILObjective(**objective), y, views_offset=start)
    assert net._cache["rows"][0] == 3 * len(BATCH)  # rows, their views, their rotations
    net2, model2 = _net(dropout=0.0)
    net2.views_active = False
    # the same rotations: the views' draws (one per row) come first when the views run
    loss2, grads2 = _step(net2, model2, FSCILObjective(**objective), y, views_offset=start + len(BATCH))
    assert net2._cache["rows"][0] == 2 * len(BATCH)  # rows and their rotations only
    assert loss == pytest.approx(loss2, rel=1e-6)
    assert grads.keys() == grads2.keys() and len(grads) > 0
    for n in grads:
        assert_close(grads[n], grads2[n], 1e-5, 1e-7, n)


def test_fit_base_runs_second_views_only_with_supcon(monkeypatch):
    split = ToySplit(seed=7)
    rows, seen = [], []
    forward = FSCILNetwork.forward

    def counting(net, batch):
        out = forward(net, batch)
        seen.append((net.two_views, len(out["pooled"]), net._cache["rows"][0]))
        return out

    monkeypatch.setattr(FSCILNetwork, "forward", counting)
    for tricks in (Tricks.only("ssl"), Tricks.only("ssl", "supcon")):
        learner = FSCILLearner(tiny_bert(0), tokenize, tricks, dataclasses.replace(SMALL, base_epochs=1))
        learner.fit_base(Session.from_split(split.base_train))
        rows.append(list(seen))
        seen.clear()
    ssl_steps = -(-len(split.base_train.texts) // SMALL.batch_size)  # one epoch of each phase
    assert len(rows[0]) == len(rows[1]) == 2 * ssl_steps
    assert all(r == 2 * n for _, n, r in rows[0][:ssl_steps])  # SimCSE reads both views
    assert all(not v and r == n for v, n, r in rows[0][ssl_steps:])  # then supervised CE alone: no second view
    assert all(v and r == 2 * n for v, n, r in rows[1])  # with SupCon the views stay
    assert learner.network.views_active


def test_a_learner_differing_in_session_tricks_reuses_the_base_training():
    split = ToySplit(seed=8)
    full = FSCILLearner(tiny_bert(0), tokenize, Tricks.all().without("subnet"), SMALL)
    full.fit_base(Session.from_split(split.base_train))
    state = full.snapshot()
    run_fscil(full, split, fit=False)
    after_sessions = full.classifier.prototypes.copy()
    tuned = full.with_tricks(Tricks.all())
    tuned.restore(state)
    shared = run_fscil(tuned, split, fit=False)
    np.testing.assert_array_equal(full.classifier.prototypes, after_sessions)  # prototypes copied, not shared
    alone = FSCILLearner(tiny_bert(0), tokenize, Tricks.all(), SMALL)
    own = run_fscil(alone, split)
    np.testing.assert_array_equal(tuned.classifier.classes, alone.classifier.classes)
    assert_close(tuned.classifier.prototypes, alone.classifier.prototypes, 0.0, 0.0, "prototypes")
    for a, b in zip(shared.predictions, own.predictions):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"tricks \['supcon'\] change base training"):
        full.with_tricks(Tricks.all().without("supcon"))


def _state(learner) -> dict[str, np.ndarray]:
    return {n: p.data for n, p in learner.model.named_parameters()}


def test_learners_differing_after_the_ssl_phase_run_it_once_through_the_cache():
    split = ToySplit(seed=9)
    base = Session.from_split(split.base_train)
    config = dataclasses.replace(SMALL, base_epochs=1, lora_dropout=0.1)  # every random stream in use
    cache: dict = {}
    first = FSCILLearner(tiny_bert(0, dropout=0.1), tokenize, Tricks.all(), config)
    first.fit_base(base, ssl_cache=cache)
    (state,) = cache.values()
    lora = {n for n in _state(first) if ".lora_" in n}
    # what the phase trains; the classifier and the rotation head wait for supervised training
    head = "base_model.model.projector.modules_to_save"
    assert set(state["params"]) - lora == {f"{head}.weight", f"{head}.bias"}
    assert lora <= set(state["params"])
    for tricks in (Tricks.all().without("pretext"), Tricks.all().without("supcon", "etf")):
        shared = FSCILLearner(tiny_bert(0, dropout=0.1), tokenize, tricks, config)
        shared.fit_base(base, ssl_cache=cache)
        own = FSCILLearner(tiny_bert(0, dropout=0.1), tokenize, tricks, config)
        own.fit_base(base)
        assert len(cache) == 1 and shared.history_ssl == own.history_ssl
        mine, theirs = _state(shared), _state(own)
        assert mine.keys() == theirs.keys()
        for n in mine:
            assert_close(mine[n], theirs[n], 0.0, 0.0, n)
        assert_close(shared.classifier.prototypes, own.classifier.prototypes, 0.0, 0.0, f"{tricks} prototypes")
    # a different classifier width (the projector's initialisation follows it) or learning rate: a phase of its own
    FSCILLearner(tiny_bert(0, dropout=0.1), tokenize, Tricks.all().without("pseudo_classes"), config).fit_base(
        base, ssl_cache=cache)
    FSCILLearner(tiny_bert(0, dropout=0.1), tokenize, Tricks.all(), dataclasses.replace(config, learning_rate=1e-3)
                 ).fit_base(base, ssl_cache=cache)
    assert len(cache) == 3


def test_subnet_sessions_run_the_cached_top_blocks_on_the_real_tokens_only(monkeypatch):
    from peftc.models.bert import BertTopBlocks

    split = ToySplit(seed=10)
    learner = FSCILLearner(tiny_bert(0), tokenize, Tricks.only("subnet"), dataclasses.replace(SMALL, subnet_steps=2))
    learner.fit_base(Session.from_split(split.base_train))
    calls = []
    forward = BertTopBlocks.forward

    def recording(top, hidden, mask=None, skip_padding=False):
        calls.append((top.layer[0].training, skip_padding))
        return forward(top, hidden, mask, skip_padding)

    monkeypatch.setattr(BertTopBlocks, "forward", recording)
    learner.add_session(Session.from_split(split.sessions[0]))
    assert (True, True) in calls and (False, True) in calls  # the tuning steps and the features
    assert all(skip for _, skip in calls)
