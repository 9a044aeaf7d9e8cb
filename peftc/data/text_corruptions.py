"""Character-level corruptions of text (typos), the text analogue of image corruptions for test-time adaptation.

Four kinds, each applied to a fraction ``rate`` of the letters of a string (letters only: digits,
spaces and punctuation are never chosen, so word boundaries survive):

* ``swap``: the letter trades places with the next character when that one is a letter too;
* ``delete``: the letter is dropped;
* ``insert``: a random lowercase letter is inserted after it;
* ``substitute``: the letter is replaced by a neighbour on a QWERTY keyboard (same case).

``mixed`` draws one of the four for each chosen letter. Five severities map to rates
(:data:`SEVERITY_RATES`). Every call is seeded: the same (text, kind, severity, seed, position in
the list) gives the same string.
"""
from __future__ import annotations

import zlib

import numpy as np

KINDS: tuple[str, ...] = ("swap", "delete", "insert", "substitute", "mixed")
SEVERITY_RATES: dict[int, float] = {1: 0.03, 2: 0.06, 3: 0.10, 4: 0.15, 5: 0.20}
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _ch in enumerate(_row):
        near = [_row[j] for j in (_c - 1, _c + 1) if 0 <= j < len(_row)]
        for _o in (_r - 1, _r + 1):
            if 0 <= _o < len(_ROWS):
                near += [_ROWS[_o][j] for j in (_c - 1, _c, _c + 1) if 0 <= j < len(_ROWS[_o])]
        _NEIGHBOURS[_ch] = "".join(near)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def corrupt_text(text: str, kind: str, rate: float, rng: np.random.Generator) -> str:
    """``text`` with ``round(rate * letters)`` of its ASCII letters (at least one if rate > 0) corrupted by ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown text corruption {kind!r}; choose from {KINDS}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    chars = list(text)
    letters = [i for i, ch in enumerate(chars) if ch.isascii() and ch.isalpha()]
    if rate == 0.0 or not letters:
        return text
    count = max(1, int(round(rate * len(letters))))
    chosen = set(rng.choice(letters, size=min(count, len(letters)), replace=False).tolist())
    out: list[str] = []
    i = 0
    while i < len(chars):
        ch = chars[i]
        if i not in chosen:
            out.append(ch)
            i += 1
            continue
        k = KINDS[int(rng.integers(4))] if kind == "mixed" else kind
        if k == "swap" and i + 1 < len(chars) and chars[i + 1].isascii() and chars[i + 1].isalpha():
            out += [chars[i + 1], ch]
            i += 2
            continue
        if k == "insert":
            out += [ch, _LETTERS[int(rng.integers(26))]]
        elif k == "substitute":
            near = _NEIGHBOURS[ch.lower()]
            new = near[int(rng.integers(len(near)))]
            out.append(new.upper() if ch.isupper() else new)
        elif k != "delete":
            out.append(ch)  # a swap with no letter to its right leaves the letter alone
        i += 1
    return "".join(out)


def corrupt_texts(texts: list[str], kind: str, severity: int, seed: int = 0) -> list[str]:
    """Every string of ``texts`` corrupted at ``severity`` (1..5, see :data:`SEVERITY_RATES`), seeded per list."""
    if severity not in SEVERITY_RATES:
        raise ValueError(f"severity must be one of {tuple(SEVERITY_RATES)}, got {severity!r}")
    rng = np.random.default_rng([seed, zlib.crc32(kind.encode()), severity])
    return [corrupt_text(t, kind, SEVERITY_RATES[severity], rng) for t in texts]
