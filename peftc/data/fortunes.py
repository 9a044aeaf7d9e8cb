"""The topic files of the Debian ``fortunes`` collection (fortune-mod, BSD licence) as a text classification set.

Source: ``/usr/share/games/fortunes/<topic>`` of the Debian packages ``fortunes`` and ``fortunes-min``
(about 2.6 MB installed; install with ``apt-get install fortunes``). Each file holds quotations and jokes
separated by lines ``%``; the file name is the topic. Only the topical files listed in :data:`TOPICS`
are used (not the grab-bags ``fortunes``, ``cookie``, ``miscellaneous``, nor author or franchise files such
as ``zippy`` or ``startrek``); the one-line descriptions beside them are ours (the package has none).

Text: whitespace runs (line breaks, the tab alignment of the attribution lines) collapse to one space.
A text that occurs in more than one topic file is dropped from all of them (its label is ambiguous);
one repeated within a file is kept once. Ids are ``"{topic}:{index in the file}"``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

DEFAULT_ROOT = "/usr/share/games/fortunes"
# (file name, description): the topical files of the collection
TOPICS: tuple[tuple[str, str], ...] = (
    ("art", "quotations and jokes about the arts: theatre, film, television, poetry"),
    ("computers", "quotations and jokes about computers and programming"),
    ("drugs", "quotations and jokes about drugs and drinking"),
    ("education", "quotations and jokes about schools, teachers and learning"),
    ("food", "quotations and jokes about food and eating"),
    ("law", "quotations and jokes about laws, lawyers and justice"),
    ("literature", "quotations and jokes about books, writers and reading"),
    ("love", "quotations and jokes about love and romance"),
    ("medicine", "quotations and jokes about doctors, health and medicine"),
    ("politics", "quotations and jokes about politics, government and politicians"),
    ("science", "quotations and jokes about science and scientists"),
    ("sports", "quotations and jokes about sports and games"),
    ("work", "quotations and jokes about work, jobs and bosses"),
)
_SPACE = re.compile(r"\s+")


@dataclass
class Fortunes:
    """Parallel lists; ``labels[i]`` indexes ``topics``."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray  # (N,) int64
    topics: tuple[str, ...]
    descriptions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


def read_fortune_file(path: str | os.PathLike) -> list[str]:
    """The entries of one fortune file, whitespace collapsed, empty entries left out."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        raw = fh.read()
    entries = re.split(r"^%\s*$", raw, flags=re.MULTILINE)
    return [t for t in (_SPACE.sub(" ", e).strip() for e in entries) if t]


def load_fortunes(root: str | os.PathLike | None = None,
                  topics: tuple[tuple[str, str], ...] = TOPICS) -> Fortunes:
    """The entries of the ``topics`` files, topic by topic in file order (see the module docstring)."""
    root = os.fspath(root or os.environ.get("PEFTC_FORTUNES_DIR") or DEFAULT_ROOT)
    per_topic: list[list[str]] = []
    for name, _ in topics:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"fortune file {path} not found: install the Debian package fortunes "
                                    f"(apt-get install fortunes) or set PEFTC_FORTUNES_DIR")
        per_topic.append(read_fortune_file(path))
    seen_in: dict[str, set[int]] = {}
    for c, entries in enumerate(per_topic):
        for t in entries:
            seen_in.setdefault(t, set()).add(c)
    ids, texts, labels = [], [], []
    for c, ((name, _), entries) in enumerate(zip(topics, per_topic)):
        kept: set[str] = set()
        for i, t in enumerate(entries):
            if len(seen_in[t]) > 1 or t in kept:
                continue
            kept.add(t)
            ids.append(f"{name}:{i}")
            texts.append(t)
            labels.append(c)
    return Fortunes(ids, texts, np.array(labels, dtype=np.int64), tuple(n for n, _ in topics),
                    tuple(d for _, d in topics))
