"""A stream of six real text classification tasks for lifelong adaptation (Adapt-inf), all from offline data.

The tasks arrive one per time step in the fixed order of :data:`STREAM` (the order is part of the benchmark;
seeds resample data order and initialisation, never the task order):

====================  ===================================================================  =======
task                  examples -> labels                                                   classes
====================  ===================================================================  =======
``noun_entities``     noun glosses -> concrete noun supersense (animal, artifact, body,    10
                      food, group, location, object, person, plant, substance)
``verb_supersenses``  verb glosses -> verb lexicographer file (verb.motion, ...)           15
``noun_categories``   noun glosses -> fine-grained hypernym category (dog, bird, ...)     20
``fortune_topics``    Debian ``fortunes`` entries -> topic file (art, computers, ...)      13
``adjective_adverb``  adjective / adverb glosses -> adj.all, adj.pert, adj.ppl, adv.all    4
``noun_abstract``     noun glosses -> abstract noun supersense (act, attribute, ...,      <= 14
                      state, time)
====================  ===================================================================  =======

Why these: they need only the Debian packages the project already installs (``wordnet-base``, ``fortunes``;
no new package), they mix in-domain shifts (three noun tasks, the two supersense halves far apart in the
stream) with real domain shifts (verbs, adjectives, jokes), and their redundancy is natural: sibling synsets
have near-identical glosses ("a genus of ..."), and some definitions recur verbatim across synsets; both are
kept (:func:`redundancy` measures it). The three noun tasks read disjoint synsets: ``noun_categories`` the
evaluation half of :func:`peftc.data.text_tasks.in_adaptation_half`, the two supersense tasks the other half.
A controlled duplication (:func:`with_duplicates`) is a second, labelled setting, off by default.

Splits are fixed (independent of any run seed): per class, in the SHA-256 order of ``"0:{id}"``, the first
``val_per_class`` rows go to validation, the next ``test_per_class`` to test, the next ``train_per_class`` (or
all that are left) to train. Classes with fewer than ``val + test + min_train`` rows are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .text_tasks import TaskSplit, TextTask, _lexfile_task, build_task, in_adaptation_half
from .wordnet import _hash_order
from .wordnet_synsets import WordNetSynsets, load_synsets

STREAM = ("noun_entities", "verb_supersenses", "noun_categories", "fortune_topics", "adjective_adverb",
          "noun_abstract")
NOUN_ENTITY_FILES = (5, 6, 8, 13, 14, 15, 17, 18, 20, 27)
NOUN_ABSTRACT_FILES = (4, 7, 9, 10, 11, 12, 16, 19, 21, 22, 23, 24, 25, 26, 28)
SPLIT_SEED = 0


@dataclass(frozen=True)
class StreamSizes:
    """Rows per class: ``train_per_class`` is a cap (smaller classes give what they have left)."""

    train_per_class: int = 40
    val_per_class: int = 5
    test_per_class: int = 20
    min_train: int = 5

    def check(self) -> None:
        if self.val_per_class < 1 or self.test_per_class < 1 or self.train_per_class < 1 or self.min_train < 1:
            raise ValueError(f"every size must be >= 1, got {self}")


@dataclass
class StreamTask:
    """One time step of the stream: the task's name, class names and its three splits."""

    name: str
    class_names: tuple[str, ...]
    train: TaskSplit
    validation: TaskSplit
    test: TaskSplit

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _noun_half(syn: WordNetSynsets, name: str) -> TextTask:
    own = lambda sid: sid.endswith("-n") and in_adaptation_half(sid)  # noqa: E731
    files = NOUN_ENTITY_FILES if name == "noun_entities" else NOUN_ABSTRACT_FILES
    return _lexfile_task(name, syn, list(files), keep_row=own)


def stream_task_source(name: str, synsets: WordNetSynsets | None = None) -> TextTask:
    """All rows of one task of :data:`STREAM` (before the split)."""
    if name not in STREAM:
        raise ValueError(f"task must be one of {STREAM}, got {name!r}")
    if name == "fortune_topics":
        return build_task(name)
    syn = synsets if synsets is not None else load_synsets()
    if name in ("noun_entities", "noun_abstract"):
        return _noun_half(syn, name)
    return build_task(name, syn)


def split_task(task: TextTask, sizes: StreamSizes = StreamSizes()) -> StreamTask:
    """The fixed train / validation / test split of one task (see the module docstring).

    >>> t = TextTask("toy", False, [f"r{i}" for i in range(16)], ["x"] * 16, np.arange(16) % 2, ("a", "b"),
    ...              ("a", "b"), ("", ""))
    >>> s = split_task(t, StreamSizes(train_per_class=3, val_per_class=1, test_per_class=2, min_train=1))
    >>> len(s.train), len(s.validation), len(s.test)
    (6, 2, 4)
    """
    sizes.check()
    need = sizes.val_per_class + sizes.test_per_class + sizes.min_train
    counts = np.bincount(task.labels, minlength=task.num_classes)
    keep = [c for c in range(task.num_classes) if counts[c] >= need]
    if len(keep) < 2:
        raise ValueError(f"task {task.name}: fewer than 2 classes have {need} rows (sizes {sizes}; class sizes "
                         f"{counts.tolist()})")
    parts: dict[str, list[tuple[int, int]]] = {"train": [], "validation": [], "test": []}
    for new, c in enumerate(keep):
        order = _hash_order(task.ids, np.flatnonzero(task.labels == c), SPLIT_SEED)
        v, t = sizes.val_per_class, sizes.val_per_class + sizes.test_per_class
        parts["validation"] += [(r, new) for r in order[:v]]
        parts["test"] += [(r, new) for r in order[v:t]]
        parts["train"] += [(r, new) for r in order[t:t + sizes.train_per_class]]
    out = {}
    for name, rows in parts.items():
        rows.sort()
        out[name] = TaskSplit([task.ids[r] for r, _ in rows], [task.texts[r] for r, _ in rows],
                              np.array([c for _, c in rows], dtype=np.int64))
    return StreamTask(task.name, tuple(task.class_names[c] for c in keep), out["train"], out["validation"],
                      out["test"])


def build_stream(sizes: StreamSizes = StreamSizes(), names: tuple[str, ...] = STREAM) -> list[StreamTask]:
    """The tasks of the stream in order, split (WordNet is read once).

    >>> stream = build_stream()  # doctest: +SKIP
    >>> [t.name for t in stream][:2]  # doctest: +SKIP
    ['noun_entities', 'verb_supersenses']
    """
    syn = load_synsets() if any(n != "fortune_topics" for n in names) else None
    return [split_task(stream_task_source(n, syn), sizes) for n in names]


def redundancy(texts: list[str]) -> dict[str, float]:
    """How redundant a list of texts is: the share of rows whose text occurs earlier (exact duplicates) and the
    share whose first three words occur earlier (template near-duplicates such as "a genus of ...").

    >>> redundancy(["a genus of fish", "a genus of fish", "a genus of birds", "a cat"])
    {'exact_duplicates': 0.25, 'same_first_3_words': 0.5}
    """
    seen, heads = set(), set()
    exact = head = 0
    for t in texts:
        exact += t in seen
        seen.add(t)
        h = " ".join(t.lower().split()[:3])
        head += h in heads
        heads.add(h)
    n = max(len(texts), 1)
    return {"exact_duplicates": exact / n, "same_first_3_words": head / n}


def with_duplicates(split: TaskSplit, rate: float, seed: int) -> TaskSplit:
    """The controlled-duplication setting: ``round(rate * len(split))`` rows drawn (seeded, with replacement)
    and appended again, ids suffixed ``"#copy{j}"`` so they stay recognisable as injected.

    >>> s = TaskSplit(["a", "b"], ["x", "y"], np.array([0, 1]))
    >>> with_duplicates(s, 0.5, 0).ids[-1].startswith(("a#copy", "b#copy"))
    True
    """
    if not 0.0 <= rate <= 10.0:
        raise ValueError(f"rate must be in [0, 10], got {rate}")
    n = int(round(rate * len(split)))
    rows = np.random.default_rng(seed).integers(0, len(split), size=n)
    return TaskSplit(split.ids + [f"{split.ids[r]}#copy{j}" for j, r in enumerate(rows)],
                     split.texts + [split.texts[r] for r in rows],
                     np.concatenate([split.labels, split.labels[rows]]))
