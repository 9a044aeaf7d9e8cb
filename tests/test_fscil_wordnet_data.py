"""The 100-class WordNet FSCIL benchmark: class choice rule, disjoint splits, exact shot counts, determinism."""
from __future__ import annotations

import os

import numpy as np
import pytest

from peftc.data.fscil_wordnet import (BASE_CLASSES, MAX_CLOSURE, MIN_CLOSURE, NUM_CLASSES, SESSIONS, SHOTS, WAYS,
                                      build_fscil_wordnet, fine_grained_categories)
from peftc.data.wordnet import DEFAULT_ROOT
from peftc.data.wordnet_synsets import WordNetSynsets, load_synsets

HAVE_WORDNET = os.path.isfile(os.path.join(os.environ.get("PEFTC_WORDNET_DIR") or DEFAULT_ROOT, "data.noun"))
needs_wordnet = pytest.mark.skipif(not HAVE_WORDNET, reason="Debian package wordnet-base not installed")


def _tree(edges: dict[str, tuple[str, ...]]) -> WordNetSynsets:
    ids = sorted(edges)
    return WordNetSynsets(ids, np.zeros(len(ids), np.int64), [(s,) for s in ids], [f"gloss {s}" for s in ids],
                          [() for _ in ids], [edges[s] for s in ids])


def test_categories_are_the_largest_disjoint_closures_inside_the_size_band():
    # closures: a 7, b 4 (b, b1, b2, shared), c 3 (c, c1, shared), d 3; `shared` has two parents, b and c
    edges = {"a-n": (), "b-n": ("a-n",), "b1-n": ("b-n",), "b2-n": ("b-n",), "shared-n": ("b-n", "c-n"),
             "c-n": ("a-n",), "c1-n": ("c-n",), "d-n": (), "d1-n": ("d-n",), "d2-n": ("d-n",)}
    syn = _tree(edges)
    # band 3..4: b (4) is taken, c (3) meets b through `shared` and is skipped, d (3) is taken
    assert fine_grained_categories(syn, num_classes=2, min_closure=3, max_closure=4) == ["b-n", "d-n"]
    # band 3..8 takes a (7 synsets) first, which covers b and c
    assert fine_grained_categories(syn, num_classes=2, min_closure=3, max_closure=8) == ["a-n", "d-n"]
    with pytest.raises(ValueError, match="only 2 disjoint categories"):
        fine_grained_categories(syn, num_classes=3, min_closure=3, max_closure=4)


@pytest.fixture(scope="module")
def nouns():
    return load_synsets(("noun",))


@pytest.fixture(scope="module")
def bench(nouns):
    return build_fscil_wordnet(nouns)


@needs_wordnet
def test_the_benchmark_has_100_disjoint_categories_of_the_promised_size(nouns, bench):
    assert bench.num_classes == NUM_CLASSES and len(set(bench.class_ids)) == NUM_CLASSES
    assert len(set(bench.ids)) == len(bench.ids)
    counts = np.bincount(bench.labels, minlength=NUM_CLASSES)
    assert MIN_CLOSURE - 1 <= counts.min() and counts.max() <= MAX_CLOSURE - 1, counts
    # no category lies below another: walking up from each category never meets a second one
    index, cats = nouns.index(), set(bench.class_ids)
    for c in bench.class_ids:
        stack, seen = list(nouns.hypernyms[index[c]]), set()
        while stack:
            s = stack.pop()
            assert s not in cats, f"{c} lies below {s}"
            if s not in seen:
                seen.add(s)
                stack.extend(nouns.hypernyms[index[s]])
    assert not cats & set(bench.ids), "a category synset is also an example"
    assert bench.class_names[:3] == ("dicot family", "chemical element", "furniture")


@needs_wordnet
def test_a_seed_gives_disjoint_splits_with_exact_session_shapes(bench):
    s = bench.split(seed=3)
    assert s.num_sessions == 1 + SESSIONS and len(s.sessions) == SESSIONS
    parts = {"base_train": s.base_train, "base_val": s.base_val, "test": s.test, "novel_val": s.novel_val,
             **{f"session{t + 1}": p for t, p in enumerate(s.sessions)}}
    ids = {k: set(p.ids) for k, p in parts.items()}
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], f"{a} and {b} share glosses"
    assert set(np.unique(s.base_train.labels)) == set(range(BASE_CLASSES))
    assert set(np.unique(s.base_val.labels)) == set(range(BASE_CLASSES))
    assert (np.bincount(s.test.labels, minlength=NUM_CLASSES) == 30).all()
    for t, shots in enumerate(s.sessions, start=1):
        want = np.arange(s.num_seen(t - 1), s.num_seen(t))
        assert set(np.unique(shots.labels)) == set(want), t
        assert (np.bincount(shots.labels, minlength=NUM_CLASSES)[want] == SHOTS).all() and len(shots) == WAYS * SHOTS
    # every row keeps its own text, and its label names its category (relabelled in session order)
    row = {sid: k for k, sid in enumerate(bench.ids)}
    for p in parts.values():
        for sid, text, label in zip(p.ids, p.texts, p.labels):
            k = row[sid]
            assert bench.texts[k] == text and bench.class_ids[bench.labels[k]] == s.class_ids[label]


@needs_wordnet
def test_splits_are_deterministic_and_the_seed_reorders_classes_and_shots_but_not_the_test_set(bench):
    a, b, c = bench.split(0), bench.split(0), bench.split(1)
    assert a.class_ids == b.class_ids and a.base_train.ids == b.base_train.ids
    assert [p.ids for p in a.sessions] == [p.ids for p in b.sessions]
    assert a.class_ids != c.class_ids and set(a.class_ids) == set(c.class_ids)
    assert sorted(a.test.ids) == sorted(c.test.ids)
    assert set(a.sessions[0].ids) != set(c.sessions[0].ids)
    small = bench.split(0, base_train_per_class=7)
    assert (np.bincount(small.base_train.labels, minlength=BASE_CLASSES) == 7).all()
    assert set(small.base_train.ids) <= set(a.base_train.ids)


@needs_wordnet
def test_impossible_split_settings_are_refused(bench):
    with pytest.raises(ValueError, match="must equal"):
        bench.split(0, base_classes=50)
    with pytest.raises(ValueError, match="fewer than"):
        bench.split(0, test_per_class=120, val_per_class=5)
    with pytest.raises(ValueError, match="base_train_per_class"):
        bench.split(0, base_train_per_class=0)


@needs_wordnet
def test_lemma_inputs_prefix_each_gloss_with_its_synset_words(nouns, bench):
    with_lemmas = build_fscil_wordnet(nouns, with_lemmas=True)
    assert with_lemmas.ids == bench.ids
    index = nouns.index()
    for sid, plain, text in list(zip(bench.ids, bench.texts, with_lemmas.texts))[:50]:
        assert text == f"{', '.join(nouns.lemmas[index[sid]])}: {plain}"
