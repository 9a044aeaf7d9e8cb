"""A 100-class few-shot class-incremental benchmark from WordNet noun categories (60 base + 8 x 5-way 5-shot).

The shape is the CIFAR-100 / miniImageNet protocol of few-shot class-incremental learning (FSCIL): 60 base
classes with all their training examples, then 8 sessions that each bring 5 new classes with exactly 5
examples each, scored after every session on the test examples of every class seen so far.

Classes (the rule, fixed and seed-independent; :func:`fine_grained_categories`): the *closure* of a noun
synset is the synset with everything below it (hyponym and instance-hyponym links, i.e. the hypernym
pointers of :mod:`peftc.data.wordnet_synsets` read downwards). The candidates are the noun synsets whose
closure holds between :data:`MIN_CLOSURE` and :data:`MAX_CLOSURE` synsets; they are taken in decreasing
closure size (ties by synset id), skipping any candidate whose closure shares a synset with one already
taken, until :data:`NUM_CLASSES` are taken. So the categories are disjoint (none lies below another, and
no synset with two parents lies below two of them), fine-grained (building, reptile, furniture, orchid,
chemical element, bird genus, ...) and each holds 128 to 199 member synsets. A class's examples are the
glosses of its members (the category synset itself is left out: its gloss is the class description).

Splits (:meth:`FSCILWordNet.split`):

- per class, in the order of SHA-256(``"fscil:{synset id}"``) (fixed for every seed), the first
  ``test_per_class`` members are the test set, the next ``val_per_class`` the validation set, the rest
  the training pool;
- per seed, the class order is the order of SHA-256(``"{seed}:order:{category id}"``): the first 60 are the
  base classes, then 5 per session; labels are renumbered in that order (base 0..59, session 1 60..64, ...);
- per seed and session, the 5 shots of a novel class are the first 5 of its training pool in the order of
  SHA-256(``"{seed}:{synset id}"``); a base class trains on its whole pool (or the first
  ``base_train_per_class`` in that order).

Everything depends only on the WordNet files and the seed, on every machine.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .text_tasks import TaskSplit, category_members
from .wordnet import _hash_order
from .wordnet_synsets import WordNetSynsets, load_synsets

NUM_CLASSES, BASE_CLASSES, SESSIONS, WAYS, SHOTS = 100, 60, 8, 5, 5
MIN_CLOSURE, MAX_CLOSURE = 50, 200


def _order_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def fine_grained_categories(synsets: WordNetSynsets, num_classes: int = NUM_CLASSES, min_closure: int = MIN_CLOSURE,
                            max_closure: int = MAX_CLOSURE) -> list[str]:
    """Synset ids of ``num_classes`` disjoint noun categories, by the rule of the module docstring.

    >>> from peftc.data.wordnet_synsets import load_synsets
    >>> cats = fine_grained_categories(load_synsets(("noun",)))  # doctest: +SKIP
    >>> len(cats)  # doctest: +SKIP
    100
    """
    if not 1 <= min_closure <= max_closure:
        raise ValueError(f"need 1 <= min_closure <= max_closure, got {min_closure}, {max_closure}")
    nouns = [i for i, sid in enumerate(synsets.ids) if sid.endswith("-n")]
    children: dict[str, list[str]] = defaultdict(list)
    for i in nouns:
        for h in synsets.hypernyms[i]:
            children[h].append(synsets.ids[i])
    closure: dict[str, frozenset[str]] = {}
    for i in nouns:  # iterative post-order: the hyponym graph is deep enough to exhaust Python's recursion
        root = synsets.ids[i]
        stack = [(root, False)]
        while stack:
            sid, expanded = stack.pop()
            if sid in closure:
                continue
            if expanded:
                out = {sid}
                for c in children.get(sid, ()):
                    out |= closure[c]
                closure[sid] = frozenset(out)
            else:
                stack.append((sid, True))
                stack.extend((c, False) for c in children.get(sid, ()) if c not in closure)
    candidates = sorted((sid for sid, members in closure.items() if min_closure <= len(members) <= max_closure),
                        key=lambda sid: (-len(closure[sid]), sid))
    taken: list[str] = []
    used: set[str] = set()
    for sid in candidates:
        if closure[sid] & used:
            continue
        taken.append(sid)
        used |= closure[sid]
        if len(taken) == num_classes:
            return taken
    raise ValueError(f"only {len(taken)} disjoint categories have closures of {min_closure}..{max_closure} synsets, "
                     f"fewer than num_classes={num_classes}")


@dataclass
class FSCILSplit:
    """One seed's FSCIL data. Labels number the classes in session order: ``class_ids[c]`` is class c's
    category synset; classes ``0..base_classes-1`` are the base session, session ``t`` (1-based) brings
    ``range(base_classes + (t-1)*ways, base_classes + t*ways)``.

    ``base_train`` / ``base_val``: base-class training and validation glosses; ``sessions[t-1]``: the shots of
    incremental session t (``ways * shots`` rows); ``test``: every class's test glosses (score session t on
    ``labels < num_seen(t)``); ``novel_val``: the validation glosses of the novel classes.
    """

    seed: int
    class_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    class_descriptions: tuple[str, ...]
    base_classes: int
    ways: int
    shots: int
    base_train: TaskSplit
    base_val: TaskSplit
    sessions: list[TaskSplit]
    test: TaskSplit
    novel_val: TaskSplit

    @property
    def num_sessions(self) -> int:
        """Sessions including the base session."""
        return 1 + len(self.sessions)

    def num_seen(self, session: int) -> int:
        """Classes seen after ``session`` (0 = the base session)."""
        return self.base_classes + session * self.ways


@dataclass
class FSCILWordNet:
    """The 100 categories and the glosses of their members (parallel ``ids``, ``texts``, ``labels``; label c
    is ``class_ids[c]``, in the order :func:`fine_grained_categories` took them)."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N,) int64
    class_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    class_descriptions: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def split(self, seed: int, test_per_class: int = 30, val_per_class: int = 10,
              base_train_per_class: int | None = None, base_classes: int = BASE_CLASSES, sessions: int = SESSIONS,
              ways: int = WAYS, shots: int = SHOTS) -> FSCILSplit:
        """The seed's class order, base data, session shots and the fixed test / validation sets.

        >>> bench = build_fscil_wordnet()  # doctest: +SKIP
        >>> s = bench.split(seed=0)  # doctest: +SKIP
        >>> len(s.sessions), len(s.sessions[0]), int(s.test.labels.max()) + 1  # doctest: +SKIP
        (8, 25, 100)
        """
        if base_classes + sessions * ways != self.num_classes:
            raise ValueError(f"base_classes ({base_classes}) + sessions ({sessions}) * ways ({ways}) must equal the "
                             f"{self.num_classes} classes")
        if min(test_per_class, val_per_class, shots, base_classes, ways) < 1 or sessions < 0:
            raise ValueError(f"test_per_class, val_per_class, shots, base_classes and ways must be >= 1, got "
                             f"{test_per_class}, {val_per_class}, {shots}, {base_classes}, {ways}")
        if base_train_per_class is not None and base_train_per_class < 1:
            raise ValueError(f"base_train_per_class must be >= 1 or None, got {base_train_per_class}")
        order = sorted(range(self.num_classes), key=lambda c: _order_key(f"{seed}:order:{self.class_ids[c]}"))
        new_label = np.empty(self.num_classes, dtype=np.int64)
        new_label[order] = np.arange(self.num_classes)
        rows: dict[str, list[int]] = defaultdict(list)
        session_rows: list[list[int]] = [[] for _ in range(sessions)]
        fixed = sorted(range(len(self.ids)), key=lambda r: _order_key(f"fscil:{self.ids[r]}"))
        per_class: dict[int, list[int]] = defaultdict(list)
        for r in fixed:
            per_class[int(self.labels[r])].append(r)
        for c in range(self.num_classes):
            members = per_class[c]
            need = test_per_class + val_per_class + shots
            if len(members) < need:
                raise ValueError(f"class {self.class_ids[c]} has {len(members)} glosses, fewer than the {need} that "
                                 f"test_per_class + val_per_class + shots ask for")
            rows["test"] += members[:test_per_class]
            pool = _hash_order(self.ids, np.asarray(members[test_per_class + val_per_class:]), seed)
            label = int(new_label[c])
            if label < base_classes:
                rows["base_val"] += members[test_per_class:test_per_class + val_per_class]
                rows["base_train"] += pool[:base_train_per_class] if base_train_per_class else pool
            else:
                rows["novel_val"] += members[test_per_class:test_per_class + val_per_class]
                session_rows[(label - base_classes) // ways] += pool[:shots]

        def part(r: list[int]) -> TaskSplit:
            r = sorted(r, key=lambda i: (new_label[self.labels[i]], i))
            return TaskSplit([self.ids[i] for i in r], [self.texts[i] for i in r],
                             new_label[self.labels[np.asarray(r, dtype=np.int64)]] if r else np.zeros(0, np.int64))

        pick = lambda names: tuple(names[c] for c in order)  # noqa: E731
        return FSCILSplit(seed, pick(self.class_ids), pick(self.class_names), pick(self.class_descriptions),
                          base_classes, ways, shots, part(rows["base_train"]), part(rows["base_val"]),
                          [part(r) for r in session_rows], part(rows["test"]), part(rows["novel_val"]))


def build_fscil_wordnet(synsets: WordNetSynsets | None = None, with_lemmas: bool = False) -> FSCILWordNet:
    """The benchmark's 100 classes and their glosses (``synsets``: at least the nouns; the default loads them).

    ``with_lemmas=True`` makes each input ``"lemma, lemma: gloss"`` instead of the gloss alone.

    >>> bench = build_fscil_wordnet()  # doctest: +SKIP
    >>> bench.num_classes, bench.class_names[:3]  # doctest: +SKIP
    (100, ('dicot family', 'chemical element', 'furniture'))
    """
    syn = synsets if synsets is not None else load_synsets(("noun",))
    cats = fine_grained_categories(syn)
    index = syn.index()
    members = category_members(syn, tuple((syn.lemmas[index[c]][0], c) for c in cats))
    rows = [i for i, sid in enumerate(syn.ids) if sid in members]
    texts = [f"{', '.join(syn.lemmas[i])}: {syn.texts[i]}" if with_lemmas else syn.texts[i] for i in rows]
    return FSCILWordNet([syn.ids[i] for i in rows], texts, np.array([members[syn.ids[i]] for i in rows], np.int64),
                        tuple(cats), tuple(syn.lemmas[index[c]][0] for c in cats),
                        tuple(syn.texts[index[c]] for c in cats))
