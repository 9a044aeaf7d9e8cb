"""Held-out text classification tasks from offline data, and the noun glosses kept apart for domain adaptation.

The medical-adaptation protocol (a base encoder against the same encoder adapted to one domain,
compared zero-shot and few-shot) needs a domain to adapt to and tasks to evaluate on. The domain is
WordNet noun glosses; the tasks are:

==========================  ==========================================================  =======  =======
task                        examples and labels                                         classes  domain
==========================  ==========================================================  =======  =======
``noun_supersenses``        noun glosses -> noun lexicographer file (noun.animal, ...)  24       in
``noun_categories``         noun glosses -> fine-grained hypernym category (dog, bird,  20       in
                            ..., mineral: the gloss's synset lies below it)
``verb_supersenses``        verb glosses -> verb lexicographer file (verb.motion, ...)  15       out
``adjective_adverb``        adjective / adverb glosses -> adj.all, adj.pert, adj.ppl,   4        out
                            adv.all
``fortune_topics``          Debian ``fortunes`` entries -> topic file (art, law, ...)   13       out
==========================  ==========================================================  =======  =======

(noun.Tops and noun.motive have fewer than :data:`MIN_PER_CLASS` synsets in the evaluation half and are
left out of ``noun_supersenses``.)

Disjointness from the adaptation data: every noun synset goes, by the SHA-256 of
``"adaptation:{synset id}"`` (fixed, independent of any seed), to the *adaptation* half or the
*evaluation* half. The two noun tasks draw only from the evaluation half; :func:`adaptation_pairs`
draws only from the adaptation half and also leaves out the 20 category synsets (whose glosses are the
category task's label descriptions) and every gloss whose text recurs verbatim outside the adaptation
half. So no synset and no gloss text the adapted model was trained on is an input of any task, for any
seed (the fortunes share no text with WordNet).

Labels are shown to the label encoder through a name and a one-line description, both real text: the
lexnames(5WN) descriptions for lexicographer files, the category synset's first lemma and gloss for
the categories, :data:`peftc.data.fortunes.TOPICS` for the fortunes. A class with fewer than
:data:`MIN_PER_CLASS` examples is left out of its task, so every split size up to that total is met
exactly in every class (:meth:`TextTask.split`).
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .fortunes import load_fortunes
from .lexnames import LEXNAMES
from .wordnet import _hash_order
from .wordnet_synsets import WordNetSynsets, load_synsets

MIN_PER_CLASS = 60
SPLITS = ("train", "validation", "test")
TASKS = ("noun_supersenses", "noun_categories", "verb_supersenses", "adjective_adverb", "fortune_topics")
IN_DOMAIN = ("noun_supersenses", "noun_categories")
# the fine-grained noun categories: (first lemma, synset id in WordNet 3.0); none lies below another
NOUN_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("dog", "02084071-n"), ("bird", "01503061-n"), ("fish", "02512053-n"), ("insect", "02159955-n"),
    ("snake", "01726692-n"), ("tree", "13104059-n"), ("fungus", "12992868-n"), ("vehicle", "04524313-n"),
    ("weapon", "04565375-n"), ("musical instrument", "03800933-n"), ("building", "02913152-n"),
    ("garment", "03419014-n"), ("furniture", "03405725-n"), ("dish", "07557434-n"), ("beverage", "07881800-n"),
    ("disease", "14070360-n"), ("city", "08524735-n"), ("river", "09411430-n"), ("language", "06282651-n"),
    ("mineral", "14662574-n"),
)
ADJ_ADV_NAMES = {0: "adjective", 1: "relational adjective", 44: "participial adjective", 2: "adverb"}


@dataclass(frozen=True)
class SplitSizes:
    """Examples per class in each split: ``train`` is the few-shot pool, ``validation`` chooses the
    template, ``test`` is scored once."""

    train: int = 8
    validation: int = 12
    test: int = 40

    def total(self) -> int:
        return self.train + self.validation + self.test


@dataclass
class TaskSplit:
    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TextTask:
    """One classification task: parallel ``ids``, ``texts``, ``labels``; ``class_names[c]`` and
    ``class_descriptions[c]`` are the label texts, ``class_ids[c]`` the source's name for class c."""

    name: str
    in_domain: bool
    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    class_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    class_descriptions: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, seed: int, sizes: SplitSizes = SplitSizes()) -> dict[str, TaskSplit]:
        """Per class, in the order of SHA-256(``"{seed}:{id}"``): the first ``sizes.validation`` rows go
        to validation, the next ``sizes.test`` to test, the next ``sizes.train`` to train (rows sorted
        within each split). Disjoint by construction; depends only on (ids, labels, seed, sizes)."""
        if min(sizes.train, sizes.validation, sizes.test) < 0 or sizes.validation < 1 or sizes.test < 1:
            raise ValueError(f"sizes must be non-negative with validation, test >= 1, got {sizes}")
        counts = np.bincount(self.labels, minlength=self.num_classes)
        if counts.min() < sizes.total():
            c = int(counts.argmin())
            raise ValueError(f"task {self.name}: class {self.class_ids[c]} has {counts[c]} examples, fewer than "
                             f"the {sizes.total()} that sizes {sizes} ask for")
        rows: dict[str, list[int]] = {s: [] for s in SPLITS}
        for c in range(self.num_classes):
            order = _hash_order(self.ids, np.flatnonzero(self.labels == c), seed)
            v, t = sizes.validation, sizes.validation + sizes.test
            rows["validation"] += order[:v]
            rows["test"] += order[v:t]
            rows["train"] += order[t:t + sizes.train]
        out = {}
        for s in SPLITS:
            r = sorted(rows[s])
            out[s] = TaskSplit([self.ids[i] for i in r], [self.texts[i] for i in r],
                               self.labels[np.asarray(r, dtype=np.int64)].copy())
        return out


def in_adaptation_half(synset_id: str) -> bool:
    """Whether a noun synset belongs to the adaptation half (fixed, seed-independent)."""
    return hashlib.sha256(f"adaptation:{synset_id}".encode()).digest()[0] < 128


def _task(name: str, ids: list[str], texts: list[str], labels: list[int], class_ids: list[str],
          class_names: list[str], class_descriptions: list[str]) -> TextTask:
    """Drop classes under MIN_PER_CLASS examples, renumber the rest in the given class order."""
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=len(class_ids))
    keep = [c for c in range(len(class_ids)) if counts[c] >= MIN_PER_CLASS]
    new = np.full(len(class_ids), -1, dtype=np.int64)
    new[keep] = np.arange(len(keep))
    rows = [i for i in range(len(ids)) if new[y[i]] >= 0]
    return TextTask(name, name in IN_DOMAIN, [ids[i] for i in rows], [texts[i] for i in rows], new[y[rows]],
                    tuple(class_ids[c] for c in keep), tuple(class_names[c] for c in keep),
                    tuple(class_descriptions[c] for c in keep))


def _lexfile_task(name: str, syn: WordNetSynsets, files: list[int], names: dict[int, str] | None = None,
                  keep_row=lambda sid: True) -> TextTask:
    col = {f: j for j, f in enumerate(files)}
    rows = [i for i, (sid, f) in enumerate(zip(syn.ids, syn.lexfiles)) if int(f) in col and keep_row(sid)]
    return _task(name, [syn.ids[i] for i in rows], [syn.texts[i] for i in rows],
                 [col[int(syn.lexfiles[i])] for i in rows], [LEXNAMES[f][1] for f in files],
                 [(names or {}).get(f, LEXNAMES[f][1].partition(".")[2]) for f in files],
                 [LEXNAMES[f][2] for f in files])


def category_members(syn: WordNetSynsets, categories=NOUN_CATEGORIES) -> dict[str, int]:
    """{synset id: category index} of the synsets below exactly one category (hypernyms and instance
    hypernyms followed upwards); synsets below two categories are ambiguous and left out."""
    index = syn.index()
    root_of = {sid: c for c, (_, sid) in enumerate(categories)}
    memo: dict[str, frozenset[int]] = {}

    def above(sid: str) -> frozenset[int]:  # categories at or above sid
        if sid in memo:
            return memo[sid]
        memo[sid] = frozenset()  # WordNet's hypernym graph is acyclic; this guards the recursion anyway
        found = set()
        if sid in root_of:
            found.add(root_of[sid])
        for h in syn.hypernyms[index[sid]]:
            found |= above(h)
        memo[sid] = frozenset(found)
        return memo[sid]

    out = {}
    for sid in syn.ids:
        cats = above(sid)
        if len(cats) == 1 and sid not in root_of:
            out[sid] = next(iter(cats))
    return out


def build_task(name: str, synsets: WordNetSynsets | None = None) -> TextTask:
    """One task of :data:`TASKS` (``synsets``: all four parts of speech, loaded once by the caller)."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {name!r}")
    if name == "fortune_topics":
        f = load_fortunes()
        return _task(name, f.ids, f.texts, f.labels.tolist(), list(f.topics), list(f.topics), list(f.descriptions))
    syn = synsets if synsets is not None else load_synsets()
    heldout = lambda sid: sid.endswith("-n") and not in_adaptation_half(sid)  # noqa: E731
    if name == "noun_supersenses":
        return _lexfile_task(name, syn, list(range(3, 29)), keep_row=heldout)
    if name == "verb_supersenses":
        return _lexfile_task(name, syn, list(range(29, 44)))
    if name == "adjective_adverb":
        return _lexfile_task(name, syn, [0, 1, 44, 2], ADJ_ADV_NAMES)
    members = category_members(syn)
    index = syn.index()
    rows = [index[sid] for sid in syn.ids if sid in members and heldout(sid)]
    descriptions = [syn.texts[index[sid]] for _, sid in NOUN_CATEGORIES]
    return _task(name, [syn.ids[i] for i in rows], [syn.texts[i] for i in rows], [members[syn.ids[i]] for i in rows],
                 [sid for _, sid in NOUN_CATEGORIES], [lemma for lemma, _ in NOUN_CATEGORIES], descriptions)


def build_tasks(names: tuple[str, ...] = TASKS) -> dict[str, TextTask]:
    """The tasks named, in the order given (WordNet is read once)."""
    syn = load_synsets() if any(n != "fortune_topics" for n in names) else None
    return {n: build_task(n, syn) for n in names}


@dataclass
class AdaptationPairs:
    """(gloss, lemmas) pairs of the adaptation half of the noun synsets: ``glosses[i]`` is the definition,
    ``lemmas[i]`` the synset's words joined by ", "; ``groups[i]`` numbers the distinct lemma texts (two
    synsets with the same words share a group, so neither is the other's negative)."""

    ids: list[str]
    glosses: list[str]
    lemmas: list[str]
    groups: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.ids)


def adaptation_pairs(synsets: WordNetSynsets | None = None, limit: int | None = None, seed: int = 0) -> AdaptationPairs:
    """The adaptation data: noun synsets of the adaptation half, minus the category synsets and minus any
    synset whose gloss text is also the text of a synset outside the adaptation half (some definitions
    recur verbatim: "a genus of ..."); with ``limit``, the first ``limit`` of them in the seeded hash order
    (then sorted by file order). ``synsets`` must hold all four parts of speech (the default loads them)."""
    syn = synsets if synsets is not None else load_synsets()
    excluded = {sid for _, sid in NOUN_CATEGORIES}
    ours = [sid.endswith("-n") and in_adaptation_half(sid) for sid in syn.ids]
    elsewhere = {text for text, own in zip(syn.texts, ours) if not own}
    rows = [i for i, sid in enumerate(syn.ids) if ours[i] and sid not in excluded and syn.texts[i] not in elsewhere]
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        rows = sorted(_hash_order(syn.ids, np.asarray(rows), seed)[:limit])
    lemmas = [", ".join(syn.lemmas[i]) for i in rows]
    group_of: dict[str, int] = defaultdict(lambda: len(group_of))
    groups = np.array([group_of[t] for t in lemmas], dtype=np.int64)
    return AdaptationPairs([syn.ids[i] for i in rows], [syn.texts[i] for i in rows], lemmas, groups)
