"""Atomic file writes: a temporary file in the target folder, then os.replace.

A reader never sees a half-written file: either the old file or the complete new one.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a fresh temporary path next to ``path``, then rename it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
    write_atomic(path, write)
