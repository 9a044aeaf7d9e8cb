"""WordNet 3.0 synsets of every part of speech with their hypernym links, for the held-out text tasks.

:mod:`peftc.data.wordnet` reads the noun and verb glosses as one 41-class set; this module reads any of
the four data files (``data.noun``, ``data.verb``, ``data.adj``, ``data.adv`` of the Debian package
``wordnet-base``) and also keeps each synset's hypernym pointers (``@`` and the instance hypernym ``@i``),
which the fine-grained category task follows upwards.

Synset ids are ``"{offset}-{letter}"`` with WordNet's part-of-speech letters n, v, a, r (adjective
satellites, ``s`` in the files, belong to data.adj and get ``a``); offsets are byte positions within
one file, so the letter keeps ids of different files apart. Adjective lemmas lose their syntactic
marker (``"able(a)"`` -> ``"able"``). Gloss texts are split as in :func:`peftc.data.wordnet.split_gloss`:
the definition is the text, the quoted examples are kept apart.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .wordnet import DEFAULT_ROOT, split_gloss

POS_FILES = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
HYPERNYM_POINTERS = ("@", "@i")
_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass
class WordNetSynsets:
    """Parallel lists over synsets in file order; ``lexfiles[i]`` is the lexicographer file number
    (0..44, see :data:`peftc.data.lexnames.LEXNAMES`) and ``hypernyms[i]`` the ids of its direct
    hypernyms and instance hypernyms (same part of speech)."""

    ids: list[str]
    lexfiles: np.ndarray  # (N,) int64
    lemmas: list[tuple[str, ...]]
    texts: list[str]
    examples: list[tuple[str, ...]]
    hypernyms: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        """{synset id: row}."""
        return {sid: i for i, sid in enumerate(self.ids)}


def _parse(line: str, letter: str, path: str) -> tuple[str, int, tuple[str, ...], str, tuple[str, ...]]:
    head, sep, gloss = line.partition(" | ")
    if not sep:
        raise ValueError(f"{path}: synset line without a gloss: {line[:60]!r}")
    f = head.split()
    offset, lexfile, n_words = f[0], int(f[1]), int(f[3], 16)
    words = tuple(_MARKER.sub("", f[4 + 2 * i]).replace("_", " ") for i in range(n_words))
    k = 4 + 2 * n_words
    n_ptr = int(f[k])
    hyper = []
    for j in range(n_ptr):
        symbol, target, target_pos = f[k + 1 + 4 * j], f[k + 2 + 4 * j], f[k + 3 + 4 * j]
        if symbol in HYPERNYM_POINTERS:
            hyper.append(f"{target}-{'a' if target_pos == 's' else target_pos}")
    return f"{offset}-{letter}", lexfile, words, gloss, tuple(hyper)


def load_synsets(parts_of_speech: tuple[str, ...] = ("noun", "verb", "adj", "adv"),
                 root: str | os.PathLike | None = None) -> WordNetSynsets:
    """The synsets of the given data files, in the order given, each file in file order.

    ``root`` defaults to ``$PEFTC_WORDNET_DIR`` or ``/usr/share/wordnet``.
    """
    unknown = [p for p in parts_of_speech if p not in POS_FILES]
    if unknown or not parts_of_speech:
        raise ValueError(f"parts_of_speech must be a non-empty selection of {tuple(POS_FILES)}, got {parts_of_speech}")
    root = os.fspath(root or os.environ.get("PEFTC_WORDNET_DIR") or DEFAULT_ROOT)
    ids, lexfiles, lemmas, texts, examples, hypernyms = [], [], [], [], [], []
    for pos in parts_of_speech:
        path = os.path.join(root, f"data.{pos}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"WordNet file {path} not found: install the Debian package wordnet-base "
                                    f"(apt-get install wordnet-base) or set PEFTC_WORDNET_DIR")
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):  # the license header
                    continue
                sid, lexfile, words, gloss, hyper = _parse(line, POS_FILES[pos], path)
                definition, exs = split_gloss(gloss)
                ids.append(sid)
                lexfiles.append(lexfile)
                lemmas.append(words)
                texts.append(definition or "; ".join(exs))
                examples.append(exs)
                hypernyms.append(hyper)
    return WordNetSynsets(ids, np.array(lexfiles, dtype=np.int64), lemmas, texts, examples, hypernyms)
