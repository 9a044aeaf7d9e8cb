"""Which OpenBLAS peftc's extension runs on, what that library reports about itself, and the thread count it
runs on (:func:`get_num_threads`, :func:`set_num_threads`, also as ``peftc.get_num_threads`` / ``peftc.set_num_threads``).

A process often holds several OpenBLAS copies (NumPy's, SciPy's, peftc's), each with its own thread pool
and settings; this module finds peftc's by asking the dynamic loader where the extension's own matrix
product resolves, so the answer is right for either build (the scipy-openblas32 wheel, the default, or
``PEFTC_BLAS=system``).
"""
from __future__ import annotations

import ctypes
import functools
import struct
from typing import Any

from . import _C

_PREFIXES = ("scipy_", "")  # the wheel's symbol prefix; the system library has none


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p), ("dli_sname", ctypes.c_char_p),
                ("dli_saddr", ctypes.c_void_p)]


def _resolve() -> tuple[ctypes.CDLL, str, str]:
    """peftc's OpenBLAS (already loaded), its file and its symbol prefix, found from the extension's side."""
    extension = ctypes.CDLL(_C.__file__)
    libc = ctypes.CDLL(None)
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    for prefix in _PREFIXES:
        try:
            sgemm = getattr(extension, prefix + "cblas_sgemm")  # looked up in the extension's dependencies
        except AttributeError:
            continue
        info = _DlInfo()
        if libc.dladdr(ctypes.cast(sgemm, ctypes.c_void_p), ctypes.byref(info)) and info.dli_fname:
            path = info.dli_fname.decode()
            return ctypes.CDLL(path), path, prefix
    raise RuntimeError(f"peftc's extension {_C.__file__} resolves no cblas_sgemm, with or without a prefix")


@functools.lru_cache(maxsize=4)
def _symbol_values(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """The values of the named symbols in an ELF64 file's full symbol table (.symtab), which also lists
    those the library does not export; the names absent (or a stripped file) are left out. Cached: the
    file is read whole (25 MB for the wheel's library)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
        return {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    wanted = {name.encode(): name for name in names}
    found: dict[str, int] = {}
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB; its sh_link is the string table
            continue
        strings = sections[sh[6]][4]
        for st_name, _, _, _, st_value, _ in struct.iter_unpack("<IBBHQQ", data[sh[4]:sh[4] + sh[5]]):
            start = strings + st_name
            name = wanted.get(data[start:data.index(b"\0", start)])
            if name is not None:
                found[name] = st_value
    return found


def _thread_timeout(lib: ctypes.CDLL, path: str, prefix: str) -> int | None:
    """log2 of the cycles an idle worker spins before it sleeps, as the library read it when it loaded."""
    exported = getattr(lib, prefix + "openblas_thread_timeout", None) or getattr(lib, "openblas_thread_timeout", None)
    if exported is not None:
        return int(exported())
    # the wheel keeps this getter internal: call it at its offset in the file, placed by the load bias
    # measured on an exported function
    anchor = prefix + "openblas_get_config"
    values = _symbol_values(path, ("openblas_thread_timeout", anchor))
    if len(values) != 2:
        return None
    bias = ctypes.cast(getattr(lib, anchor), ctypes.c_void_p).value - values[anchor]
    return int(ctypes.CFUNCTYPE(ctypes.c_int)(bias + values["openblas_thread_timeout"])())


def get_num_threads() -> int:
    """The number of threads peftc's OpenBLAS runs a large matrix product on, and peftc's own kernels split
    their work over (``OPENBLAS_NUM_THREADS`` or the core count at start-up, or the last
    :func:`set_num_threads`). Products too small to gain from a second thread run on one whatever it says.

    Example:
        >>> import peftc
        >>> peftc.get_num_threads() >= 1
        True
    """
    return int(_C.blas_get_threads())


def set_num_threads(n: int) -> None:
    """Run peftc's OpenBLAS, and peftc's own kernels, on ``n`` threads from now on in this process.

    Only peftc's copy of OpenBLAS changes; NumPy's own copy keeps its count. Raises ``ValueError`` for
    ``n < 1`` and ``TypeError`` for a non-integer.

    Example:
        >>> import peftc
        >>> old = peftc.get_num_threads()
        >>> peftc.set_num_threads(1)
        >>> peftc.get_num_threads()
        1
        >>> peftc.set_num_threads(old)
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _C.blas_set_threads(n)


def openblas_info() -> dict[str, Any]:
    """The OpenBLAS peftc's kernels call: which build, which file, and what the library reports.

    Keys: ``build`` ("scipy-openblas32" or "system"), ``library`` (its path), ``config`` and ``corename``
    (OpenBLAS's own strings: version, options, the CPU kernel it picked), ``num_threads`` (what
    ``OPENBLAS_NUM_THREADS`` or the core count gave it) and ``thread_timeout`` (log2 of the cycles an idle
    worker spins, read from ``OPENBLAS_THREAD_TIMEOUT`` at load; None if the library hides it).

    Example:
        >>> import peftc
        >>> info = peftc.openblas.openblas_info()
        >>> info["build"] in ("scipy-openblas32", "system")
        True
    """
    lib, path, prefix = _resolve()
    for name in ("openblas_get_config", "openblas_get_corename"):
        getattr(lib, prefix + name).restype = ctypes.c_char_p
    return {
        "build": "scipy-openblas32" if prefix else "system",
        "library": path,
        "config": getattr(lib, prefix + "openblas_get_config")().decode().strip(),
        "corename": getattr(lib, prefix + "openblas_get_corename")().decode(),
        "num_threads": get_num_threads(),
        "thread_timeout": _thread_timeout(lib, path, prefix),
    }
