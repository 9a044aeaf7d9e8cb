"""WordNet 3.0 glosses from the Debian wordnet-base files: counts, labels, gloss parsing, split stability."""
from __future__ import annotations

import gzip
import hashlib
import os
import re

import numpy as np
import pytest

from peftc.data import wordnet as wn
from peftc.data.lexnames import LEXNAMES

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(wn.DEFAULT_ROOT, "data.noun")),
                                reason="Debian package wordnet-base not installed")


@pytest.fixture(scope="module")
def glosses() -> wn.WordNetGlosses:
    return wn.load_wordnet_glosses()


def _digest(ids: list[str]) -> str:
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]


def test_wordnet_has_all_noun_and_verb_synsets_in_41_classes(glosses):
    assert len(glosses) == 95882  # 82115 noun + 13767 verb synsets in WordNet 3.0
    counts = glosses.class_counts()
    assert counts.shape == (41,) and counts.min() > 0
    assert glosses.class_names[counts.argmin()] == "noun.motive" and counts.min() == 42
    assert counts[glosses.class_names.index("noun.Tops")] == 51
    assert len(set(glosses.ids)) == len(glosses)
    assert all(t for t in glosses.texts)


def test_wordnet_labels_and_text_of_a_known_synset(glosses):
    i = glosses.ids.index("02084071-n")
    assert glosses.class_names[glosses.labels[i]] == "noun.animal"
    assert glosses.class_descriptions[glosses.labels[i]] == "nouns denoting animals"
    assert glosses.lemmas[i][:2] == ("dog", "domestic dog")
    assert glosses.texts[i].startswith("a member of the genus Canis")
    assert '"' not in glosses.texts[i] and glosses.examples[i] == ("the dog barked all night",)


def test_split_gloss_separates_definition_from_quoted_examples():
    d, ex = wn.split_gloss('draw air into, and expel out of, the lungs; "I can breathe"; "The patient is respiring"  ')
    assert d == "draw air into, and expel out of, the lungs"
    assert ex == ("I can breathe", "The patient is respiring")
    assert wn.split_gloss("an entity that has physical existence") == ("an entity that has physical existence", ())
    assert wn.split_gloss('"only an example"') == ("", ("only an example",))


def test_lexnames_table_matches_the_installed_man_page():
    page = "/usr/share/man/man5/lexnames.5WN.gz"
    if not os.path.isfile(page):
        pytest.skip("lexnames(5WN) man page not installed")
    rows = [(int(m[1]), m[2].strip(), m[3].strip()) for m in
            (re.match(r"^(\d\d)\t(\S+)\s*\t(.*)$", line) for line in gzip.open(page, "rt")) if m]
    assert tuple(rows) == LEXNAMES


def test_split_is_stratified_disjoint_and_covers_everything(glosses):
    parts = wn.stratified_split_indices(glosses.ids, glosses.labels, seed=0)
    all_rows = np.concatenate(list(parts.values()))
    assert len(all_rows) == len(glosses) and len(np.unique(all_rows)) == len(glosses)
    counts = glosses.class_counts()
    for name, frac in (("validation", 0.1), ("test", 0.1)):
        per_class = np.bincount(glosses.labels[parts[name]], minlength=41)
        assert np.all(per_class >= 1)
        assert np.all(np.abs(per_class - counts * frac) <= 1.0)


def test_split_is_stable_across_runs_and_machines(glosses):
    # SHA-256 ordering: these digests hold on every machine and Python version.
    split = glosses.split(seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 76704, "validation": 9589, "test": 9589}
    assert split["validation"].ids[:3] == ["00003993-n", "00020090-n", "00022903-n"]
    assert _digest(split["train"].ids) == "0ced38ed2b8f7c29"
    assert _digest(split["test"].ids) == "060f33ed1859bf17"
    assert glosses.split(seed=1)["test"].ids[:3] == ["00006269-n", "00015388-n", "00023773-n"]


def test_subsample_per_class_is_seeded_and_capped(glosses):
    a = glosses.subsample_per_class(10, seed=0)
    assert len(a) == 410 and a.class_counts().max() == 10
    assert a.ids == glosses.subsample_per_class(10, seed=0).ids
    assert a.ids != glosses.subsample_per_class(10, seed=1).ids


def test_missing_wordnet_files_name_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        wn.load_wordnet_glosses(tmp_path)


def test_split_of_tiny_classes_never_overlaps():
    ids = [f"{i:08d}-n" for i in range(7)]
    labels = np.array([0, 0, 0, 1, 1, 2, 2], dtype=np.int64)
    parts = wn.stratified_split_indices(ids, labels, seed=3, fractions=(0.0, 0.5, 0.5))
    rows = np.concatenate(list(parts.values()))
    assert len(rows) == 7 and len(np.unique(rows)) == 7
    with pytest.raises(ValueError, match="fractions"):
        wn.stratified_split_indices(ids, labels, fractions=(0.8, 0.1, 0.2))


def test_input_texts_can_prefix_the_lemmas(glosses):
    dog = glosses.subset([glosses.ids.index("02084071-n")])
    assert dog.input_texts() == dog.texts
    assert dog.input_texts(with_lemmas=True)[0].startswith("dog, domestic dog, Canis familiaris: a member of")
