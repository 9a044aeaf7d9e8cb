"""Atomic single-file checkpoints: named float arrays plus a JSON header, in one ``.npz``.

The file is written to a temporary name in the destination folder, flushed to disk, then renamed
over the destination with ``os.replace``; a crash at any point leaves either the previous file or
the new one, never a partial file. Loading checks the format tag and raises ``ValueError`` naming
the path for anything unreadable.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .io.atomic import write_atomic

FORMAT = "peftc-checkpoint"
VERSION = 1
_META_KEY = "__meta__"


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and the JSON-serialisable ``meta`` to ``path`` atomically."""
    path = os.fspath(path)
    if _META_KEY in arrays:
        raise ValueError(f"array name {_META_KEY!r} is reserved")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = json.dumps({"format": FORMAT, "version": VERSION, **meta}, sort_keys=True).encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{_META_KEY: np.frombuffer(header, dtype=np.uint8)})

    write_atomic(path, write)


def load_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a file written by :func:`save_npz_atomic`."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"checkpoint {path} is unreadable: {e}") from e
    if _META_KEY not in arrays:
        raise ValueError(f"checkpoint {path} has no {_META_KEY} header: not a peftc checkpoint")
    meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r} version {meta.get('version')!r}, "
                         f"expected {FORMAT!r} version {VERSION}")
    return arrays, meta
