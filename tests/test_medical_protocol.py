"""The medical-adaptation protocol: its held-out tasks, its template selection, and its runner end to end.

- the task builders give deterministic, disjoint, stratified splits of exactly the promised sizes,
  and no noun gloss of a task (for any seed) is in the adaptation data;
- template selection chooses on validation and scores the test split exactly once per model;
- the in-batch contrastive objective of the adaptation has the gradient its finite differences give;
- ``benchmarks/medical_protocol.py --quick`` on one small task writes the results contract.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peftc.data.text_tasks import (NOUN_CATEGORIES, TASKS, SplitSizes, adaptation_pairs, build_task, build_tasks,
                                   category_members, in_adaptation_half)
from peftc.data.wordnet import DEFAULT_ROOT
from peftc.data.wordnet_synsets import load_synsets
from tests.benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
HAVE_WORDNET = os.path.isfile(os.path.join(os.environ.get("PEFTC_WORDNET_DIR") or DEFAULT_ROOT, "data.noun"))
HAVE_FORTUNES = os.path.isfile(os.path.join(os.environ.get("PEFTC_FORTUNES_DIR") or "/usr/share/games/fortunes", "law"))
needs_data = pytest.mark.skipif(not (HAVE_WORDNET and HAVE_FORTUNES),
                                reason="Debian packages wordnet-base and fortunes not installed")


@pytest.fixture(scope="module")
def synsets():
    return load_synsets()


@pytest.fixture(scope="module")
def tasks(synsets):
    return {name: build_task(name, synsets) for name in TASKS}


@needs_data
def test_every_task_splits_into_disjoint_stratified_parts_of_the_promised_sizes(tasks):
    sizes = SplitSizes(train=5, validation=7, test=11)
    assert {n: t.num_classes for n, t in tasks.items()} == {"noun_supersenses": 24, "noun_categories": 20,
                                                           "verb_supersenses": 15, "adjective_adverb": 4,
                                                           "fortune_topics": 13}
    for name, task in tasks.items():
        assert task.num_classes >= 4, name
        assert len(set(task.ids)) == len(task.ids), f"{name}: duplicate ids"
        parts = task.split(3, sizes)
        ids = {s: set(p.ids) for s, p in parts.items()}
        assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"], name
        assert not ids["validation"] & ids["test"], name
        for split, per_class in (("train", 5), ("validation", 7), ("test", 11)):
            counts = np.bincount(parts[split].labels, minlength=task.num_classes)
            assert (counts == per_class).all(), f"{name} {split}: {counts}"
            # each row keeps its own text and label
            row = {i: k for k, i in enumerate(task.ids)}
            for sid, text, label in zip(parts[split].ids, parts[split].texts, parts[split].labels):
                assert task.texts[row[sid]] == text and task.labels[row[sid]] == label


@needs_data
def test_splits_are_deterministic_per_seed_and_differ_across_seeds(tasks):
    task = tasks["verb_supersenses"]
    a, b, c = task.split(0), task.split(0), task.split(1)
    for s in ("train", "validation", "test"):
        assert a[s].ids == b[s].ids
    assert a["test"].ids != c["test"].ids


@needs_data
def test_a_split_asking_for_more_than_a_class_holds_is_refused(tasks):
    task = tasks["adjective_adverb"]  # its smallest class, adj.ppl, has 60 synsets
    with pytest.raises(ValueError, match="adj.ppl"):
        task.split(0, SplitSizes(train=30, validation=20, test=20))


@needs_data
def test_no_task_gloss_is_adaptation_data(tasks, synsets):
    pairs = adaptation_pairs(synsets)
    adapt = set(pairs.ids)
    assert len(adapt) > 30_000 and all(in_adaptation_half(sid) for sid in adapt)
    texts = set(pairs.glosses)
    for name, task in tasks.items():
        assert not adapt & set(task.ids), name
        assert not texts & set(task.texts), name  # definitions that recur verbatim stay out of adaptation too
        assert task.in_domain == (name in ("noun_supersenses", "noun_categories"))
    # the category synsets' glosses are label descriptions: not adaptation data either
    assert not adapt & {sid for _, sid in NOUN_CATEGORIES}
    assert len(pairs.groups) == len(pairs) and pairs.groups.max() < len(pairs)


@needs_data
def test_noun_categories_are_disjoint_subtrees_and_members_lie_below_one_category(synsets):
    index = synsets.index()
    members = category_members(synsets)
    roots = [sid for _, sid in NOUN_CATEGORIES]
    for lemma, sid in NOUN_CATEGORIES:
        assert lemma in synsets.lemmas[index[sid]]
        assert sid not in members  # no category lies below another
    # a known member: poodle is a dog
    poodle = next(sid for sid, words in zip(synsets.ids, synsets.lemmas) if "poodle dog" in words)
    assert roots[members[poodle]] == "02084071-n"


@needs_data
def test_build_tasks_reads_wordnet_once_and_keeps_the_order():
    tasks = build_tasks(("fortune_topics", "adjective_adverb"))
    assert list(tasks) == ["fortune_topics", "adjective_adverb"]
    assert tasks["fortune_topics"].class_names[:2] == ("art", "computers")


# -- template selection ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mp():
    return load_benchmark("medical_protocol")


def _disagreeing_scorer(mp, best_on_validation: int, best_on_test: int):
    """Two classes, one example per split, both of class 1; template i's class-1 vector is e_i and its
    class-0 vector 0.5 * ones, so only template ``best_on_validation`` is right on validation and only
    ``best_on_test`` on test. Returns the scorer and {template: class vectors}."""
    n = len(mp.TEMPLATES)
    eye = np.eye(n, dtype=np.float32)
    inputs = {"validation": eye[[best_on_validation]], "test": eye[[best_on_test]]}
    labels = {"validation": np.array([1]), "test": np.array([1])}
    vectors = {t: np.stack([np.full(n, 0.5, np.float32), eye[i]]) for i, t in enumerate(mp.TEMPLATES)}
    return mp.SplitScorer(inputs, labels), vectors


def test_template_selection_uses_validation_and_scores_the_test_once(mp):
    scorer, vectors = _disagreeing_scorer(mp, best_on_validation=4, best_on_test=9)
    sel = mp.select_template(vectors.__getitem__, scorer)
    assert sel.best_candidate == mp.TEMPLATES[4]
    assert sel.scores == tuple(float(i == 4) for i in range(len(mp.TEMPLATES)))
    assert sel.test_score.tolist() == [0]  # the validation choice is wrong on this test example, and stays so
    assert scorer.calls == ["validation"] * len(mp.TEMPLATES) + ["test"]
    assert len(mp.TEMPLATES) >= 10 and len(set(mp.TEMPLATES)) == len(mp.TEMPLATES)


def test_a_selection_that_scores_the_test_more_than_once_is_refused(mp):
    scorer, vectors = _disagreeing_scorer(mp, 0, 0)

    def peeking(t):  # a candidate builder that scores the test split itself
        scorer(vectors[t], "test")
        return vectors[t]

    with pytest.raises(RuntimeError, match="test once"):
        mp.select_template(peeking, scorer)


# -- the adaptation objective ------------------------------------------------------------------------
class _LinearEncoder:
    """sentence_embedding = normalise(mean over unmasked tokens of E[ids]) in float64, for finite differences."""

    def __init__(self, rng):
        self.E = rng.standard_normal((20, 6))
        self.grad = np.zeros_like(self.E)

    def sentence_embedding(self, ids, mask):
        m = mask.astype(np.float64)
        self._ids, self._m = ids, m
        self._s = (self.E[ids] * m[..., None]).sum(1) / m.sum(1, keepdims=True)
        self._n = np.linalg.norm(self._s, axis=1, keepdims=True)
        return self._s / self._n

    def sentence_embedding_backward(self, demb):
        u = self._s / self._n
        ds = (demb - u * (demb * u).sum(1, keepdims=True)) / self._n
        dtok = ds[:, None, :] * (self._m / self._m.sum(1, keepdims=True))[..., None]
        np.add.at(self.grad, self._ids, dtok)


def test_contrastive_loss_gradient_matches_finite_differences_and_skips_same_word_pairs():
    dam = load_benchmark("domain_adapted_minilm")
    rng = np.random.default_rng(0)
    enc = _LinearEncoder(rng)
    b, t = 5, 4
    batch = {"gloss_ids": rng.integers(1, 20, (b, t)), "lemma_ids": rng.integers(1, 20, (b, t)),
             "gloss_mask": np.ones((b, t), np.int64), "lemma_mask": np.ones((b, t), np.int64)}
    batch["lemma_mask"][:, 3] = 0
    groups = np.array([0, 1, 2, 1, 3])  # rows 1 and 3 share their words: not each other's negative
    head, loss = dam.GlossLemmaContrastive(enc, scale=3.0), dam.InBatchLoss()

    def value():
        return loss.forward(head.forward(batch), groups)

    value()
    head.backward(loss.backward())
    dlogits = loss.backward()
    assert dlogits[1, 3] == 0.0 and dlogits[3, 1] == 0.0 and dlogits[1, 2] != 0.0
    numeric = np.zeros_like(enc.E)
    for i in np.ndindex(enc.E.shape):
        old = enc.E[i]
        enc.E[i] = old + 1e-3
        up = value()
        enc.E[i] = old - 1e-3
        numeric[i] = (up - value()) / 2e-3
        enc.E[i] = old
    # the logits pass through float32 (the Trainer's loss is float32): a step of 1e-3 keeps the rounding of the
    # loss (~1e-7) at ~1e-4 in the difference quotient, and its truncation error is ~1e-6
    np.testing.assert_allclose(enc.grad, numeric, rtol=1e-2, atol=5e-4)


# -- the runner ------------------------------------------------------------------------------------------
@needs_data
def test_quick_run_writes_the_results_contract(tmp_path):
    """--quick on the smallest task, 2 seeds, 2 adaptation steps; the subprocess timeout (300 s) only guards against a hang."""
    out = tmp_path / "mpq"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PEFTC_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "medical_protocol.py"), "--quick", "--tasks",
                          "adjective_adverb", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)  # 12 s on a quiet machine, 49-60 s at load 10 on 2 cores
    assert run.returncode == 0, run.stderr[-3000:]
    payload = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert payload["settings"]["reduced"] and "REDUCED" in md
    assert payload["environment"]["cpu"]
    verdicts = payload["verdicts"]
    assert len(verdicts) == 2 * 2  # protocols x regimes on one task
    for v in verdicts:
        assert list(v)[:6] == ["claim", "holds", "p_holm", "diff", "ci95", "n_seeds"]
        assert v["n_seeds"] == 2 and v["holds"] is False  # 2 seeds never suffice for a verdict
    for k, seed in payload["per_seed"].items():
        for protocol in ("fair", "shared"):
            st = seed["statistics"][protocol]
            assert sum(st["win_tie_loss"].values()) == len(st["cases"]) == 2
            for c in st["cases"]:
                assert c["n"] == 4 * 4 and c["verdict"] in ("win", "tie", "loss")
                assert c["ci95"][0] <= c["diff"] <= c["ci95"][1]
                assert abs(c["diff"] - (c["acc_adapted"] - c["acc_base"])) < 1e-12
                assert c["p_mcnemar"] <= c["p_holm"] <= 1.0
        for regime in ("zero_shot", "few_shot"):
            r = seed["tasks"]["adjective_adverb"]["regimes"][regime]
            for m in ("base", "adapted"):
                assert r["models"][m]["test_scored"] == 1
                assert len(r["models"][m]["validation"]) == len(payload["templates"]) >= 10
            assert r["shared_template"] == r["models"]["adapted"]["template"]
            if r["shared_template"] == r["models"]["base"]["template"]:  # then the ablation changes nothing
                assert r["shared_base_test_pred"] == r["models"]["base"]["test_pred"]
        assert seed["adaptation"]["steps"] == 2
        assert seed["tasks"]["adjective_adverb"]["in_domain"] is False
    assert "| adjective_adverb/zero_shot |" in md and "| claim | holds |" in md
    assert "In the adapted domain (noun glosses): none of the tasks run;" in md

    # the adapted models were merged and cached: LoRA changed query and value weights, nothing else
    from peftc.models import BertModel, minilm_path
    folders = sorted((tmp_path / "cache" / "medical_protocol").glob("minilm_nouns_*"))
    assert len(folders) == 2  # one per seed
    base = BertModel.from_pretrained(minilm_path()).state_dict()
    for folder in folders:
        adapted = BertModel.from_pretrained(folder).state_dict()
        changed = {k for k in base if not np.array_equal(base[k], adapted[k])}
        assert changed == {f"encoder.layer.{i}.attention.self.{m}.weight" for i in range(6) for m in ("query", "value")}

    # --merge: the seeds split into two files and merged back give the same table and verdicts
    mp = load_benchmark("medical_protocol")
    for k in payload["per_seed"]:
        part = dict(payload, per_seed={k: payload["per_seed"][k]}, settings={**payload["settings"], "seeds": [int(k)]})
        (tmp_path / f"part{k}.json").write_text(json.dumps(part))
    merged = mp.merge([str(tmp_path / "part0"), str(tmp_path / "part1")], str(tmp_path / "merged"))
    assert merged["aggregate"] == payload["aggregate"] and merged["settings"] == payload["settings"]
    # one seed (a --seed process): the verdicts list is there, no claim holds, the markdown says why
    one = dict(payload, per_seed={"0": payload["per_seed"]["0"]})
    one["aggregate"] = mp.aggregate(one["per_seed"])
    assert [v["claim"] for v in one["aggregate"]["verdicts"]] == [v["claim"] for v in verdicts]
    assert all(not v["holds"] and v["n_seeds"] == 1 for v in one["aggregate"]["verdicts"])
    assert "One seed" in mp.markdown(one)
    other = dict(part, settings={**part["settings"], "test_per_class": 5})
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="test_per_class"):
        mp.merge([str(tmp_path / "part0"), str(tmp_path / "other")], str(tmp_path / "bad"))


@needs_data
def test_adapted_model_cache_key_follows_the_settings_and_the_data():
    dam = load_benchmark("domain_adapted_minilm")
    s = dam.AdaptSettings(pairs=50)
    pairs = adaptation_pairs(limit=50)
    other = adaptation_pairs(limit=50, seed=1)
    assert dam.fingerprint(pairs) == dam.fingerprint(adaptation_pairs(limit=50))
    assert dam.fingerprint(pairs) != dam.fingerprint(other)
    assert s.key(dam.fingerprint(pairs)) != s.key(dam.fingerprint(other))
    assert s.key(dam.fingerprint(pairs)) != dam.AdaptSettings(pairs=50, learning_rate=1e-3).key(dam.fingerprint(pairs))


@needs_data
def test_adaptation_with_fewer_pairs_than_a_batch_is_refused():
    dam = load_benchmark("domain_adapted_minilm")
    s = dam.AdaptSettings(pairs=4, batch_size=8, max_steps=1)
    with pytest.raises(ValueError, match="batch_size=8 pairs, got 4"):
        dam.adapt(s, adaptation_pairs(limit=4))
