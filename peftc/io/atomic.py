"""Atomic file writes: a temporary file in the target folder, then os.replace.

A reader never sees a half-written file: either the old file or the complete new one.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable


def _umask() -> int:
    """The process's file-creation mask, read without changing it where Linux tells it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable read is a set and a restore
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a fresh temporary path next to ``path``, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give it: those of the file it replaces,
    or 0o666 less the umask for a new one (the temporary file itself is created private, 0o600).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
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
