"""WordNet 3.0 glosses labelled by lexicographer file: a 41-class text classification set.

Source: the ``data.noun`` and ``data.verb`` files of the Debian package ``wordnet-base``
(``/usr/share/wordnet``). Each synset line reads
``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``; the example is the gloss, the label
is the lexicographer file (``noun.animal``, ``verb.motion``, ...). The 26 noun files (numbers
3..28) and 15 verb files (29..43) give 41 classes, label = file number - 3; adjective and adverb
files are left out.

Gloss text: WordNet glosses are a definition followed by zero or more quoted example sentences,
each introduced by ``; "``. With ``strip_examples=True`` (the default) only the definition is
kept, because the examples often contain the head word itself and would make the task a lookup;
the examples stay available in ``examples``. About 20 glosses quote an example after ``: "``
instead; that stays in the definition (kept as WordNet wrote it). A few glosses carry no definition before the first
example; their text is then the examples joined by ``"; "``, so no text is ever empty.

Splits are stratified by class and deterministic on every machine and Python version: within each
class the synsets are ordered by SHA-256 of ``"{seed}:{synset_id}"``, which depends neither on
hash randomization nor on NumPy's generator streams.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from .lexnames import LEXNAMES

DEFAULT_ROOT = "/usr/share/wordnet"
FIRST_FILE, LAST_FILE = 3, 43  # noun.Tops .. verb.weather
NUM_CLASSES = LAST_FILE - FIRST_FILE + 1
CLASS_NAMES: tuple[str, ...] = tuple(LEXNAMES[n][1] for n in range(FIRST_FILE, LAST_FILE + 1))
CLASS_DESCRIPTIONS: tuple[str, ...] = tuple(LEXNAMES[n][2] for n in range(FIRST_FILE, LAST_FILE + 1))
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class WordNetGlosses:
    """Parallel lists of synsets; ``labels[i]`` indexes :data:`CLASS_NAMES`.

    ``ids`` are WordNet synset ids ``"{offset:08d}-{n|v}"``, unique across the set; ``lemmas`` the
    synset's words (underscores replaced by spaces); ``texts`` the gloss text used as input.
    """

    ids: list[str]
    texts: list[str]
    lemmas: list[tuple[str, ...]]
    examples: list[tuple[str, ...]]
    labels: np.ndarray  # (N,) int64 in [0, 41)
    class_names: tuple[str, ...] = field(default=CLASS_NAMES)
    class_descriptions: tuple[str, ...] = field(default=CLASS_DESCRIPTIONS)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input_texts(self, with_lemmas: bool = False) -> list[str]:
        """The model inputs: the gloss texts, or ``"lemma, lemma: gloss"`` with ``with_lemmas=True``."""
        if not with_lemmas:
            return list(self.texts)
        return [f"{', '.join(words)}: {text}" for words, text in zip(self.lemmas, self.texts)]

    def class_counts(self) -> np.ndarray:
        """(41,) int64: examples per class."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def subset(self, indices: np.ndarray | list[int]) -> WordNetGlosses:
        """A new set holding the given rows, in the given order."""
        idx = [int(i) for i in indices]
        return WordNetGlosses([self.ids[i] for i in idx], [self.texts[i] for i in idx],
                              [self.lemmas[i] for i in idx], [self.examples[i] for i in idx],
                              self.labels[np.asarray(idx, dtype=np.int64)].copy() if idx
                              else np.zeros(0, dtype=np.int64),
                              self.class_names, self.class_descriptions)

    def split(self, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
              ) -> dict[str, WordNetGlosses]:
        """Stratified train/validation/test split; see :func:`stratified_split_indices`."""
        parts = stratified_split_indices(self.ids, self.labels, seed, fractions)
        return {name: self.subset(idx) for name, idx in parts.items()}

    def subsample_per_class(self, per_class: int, seed: int = 0) -> WordNetGlosses:
        """At most ``per_class`` examples of each class, chosen by the seeded hash order."""
        if per_class <= 0:
            raise ValueError(f"per_class must be > 0, got {per_class}")
        keep: list[int] = []
        for c in range(self.num_classes):
            rows = np.flatnonzero(self.labels == c)
            keep.extend(_hash_order(self.ids, rows, seed)[:per_class])
        return self.subset(sorted(keep))


def _hash_key(seed: int, synset_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{synset_id}".encode()).digest()


def _hash_order(ids: list[str], rows: np.ndarray, seed: int) -> list[int]:
    return sorted((int(r) for r in rows), key=lambda r: _hash_key(seed, ids[r]))


def stratified_split_indices(ids: list[str], labels: np.ndarray, seed: int = 0,
                             fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Row indices of a stratified split, sorted ascending within each part.

    Per class of n rows: ``round(n * fractions[1])`` validation and ``round(n * fractions[2])``
    test rows (each at least 1 when n >= 3), the rest train; rows are taken in the seeded hash
    order, so the split depends only on (ids, labels, seed, fractions).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if len(ids) != len(labels):
        raise ValueError(f"ids ({len(ids)}) and labels ({len(labels)}) differ in length")
    parts: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for c in np.unique(labels):
        order = _hash_order(ids, np.flatnonzero(labels == c), seed)
        n = len(order)
        n_val, n_test = (int(round(n * f)) for f in fractions[1:])
        if n >= 3:
            n_val = max(n_val, 1) if fractions[1] > 0 else 0
            n_test = max(n_test, 1) if fractions[2] > 0 else 0
        n_val = min(n_val, n)
        n_test = min(n_test, n - n_val)
        parts["validation"] += order[:n_val]
        parts["test"] += order[n_val:n_val + n_test]
        parts["train"] += order[n_val + n_test:]
    return {name: np.array(sorted(rows), dtype=np.int64) for name, rows in parts.items()}


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """(definition, example sentences) of a raw WordNet gloss."""
    gloss = gloss.strip()
    cut = gloss.find('"')
    if cut < 0:
        return gloss.rstrip("; "), ()
    # The definition ends at the first `; "` (or the gloss opens with an example).
    head = gloss.find('; "')
    if head < 0 and not gloss.startswith('"'):
        return gloss.rstrip("; "), ()
    end = 0 if gloss.startswith('"') else head
    definition = gloss[:end].strip().rstrip(";").strip()
    rest = gloss[end:].lstrip("; ")
    examples = tuple(e for e in (s.strip(' ";') for s in rest.split('; "')) if e)
    return definition, examples


def _parse_line(line: str, pos: str) -> tuple[str, int, tuple[str, ...], str]:
    head, sep, gloss = line.partition(" | ")
    if not sep:
        raise ValueError(f"WordNet data.{pos}: synset line without a gloss: {line[:60]!r}")
    fields = head.split()
    offset, lexfile, word_count = fields[0], int(fields[1]), int(fields[3], 16)
    words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(word_count))
    return f"{offset}-{pos[0]}", lexfile, words, gloss


def load_wordnet_glosses(root: str | os.PathLike | None = None, strip_examples: bool = True) -> WordNetGlosses:
    """All noun and verb synsets of WordNet 3.0 (about 95.9k), in file order (nouns, then verbs).

    ``root`` defaults to ``$PEFTC_WORDNET_DIR`` or the Debian location ``/usr/share/wordnet``.
    """
    root = os.fspath(root or os.environ.get("PEFTC_WORDNET_DIR") or DEFAULT_ROOT)
    ids, texts, lemmas, examples, labels = [], [], [], [], []
    for pos in ("noun", "verb"):
        path = os.path.join(root, f"data.{pos}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"WordNet file {path} not found: install the Debian package wordnet-base "
                                    f"(apt-get install wordnet-base) or set PEFTC_WORDNET_DIR")
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # the license header
                    continue
                sid, lexfile, words, gloss = _parse_line(line, pos)
                if not FIRST_FILE <= lexfile <= LAST_FILE:
                    raise ValueError(f"{path}: synset {sid} has lexicographer file {lexfile}, "
                                     f"outside the noun/verb range {FIRST_FILE}..{LAST_FILE}")
                definition, exs = split_gloss(gloss)
                text = definition if strip_examples else gloss.strip()
                ids.append(sid)
                texts.append(text or "; ".join(exs))
                lemmas.append(words)
                examples.append(exs)
                labels.append(lexfile - FIRST_FILE)
    return WordNetGlosses(ids, texts, lemmas, examples, np.array(labels, dtype=np.int64))
