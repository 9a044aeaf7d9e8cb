"""Read and write .safetensors files as dicts of float32 NumPy arrays, with checked contents.

Built on the ``safetensors`` package's NumPy API. Writes are atomic (temporary file, then rename).
Reads turn every problem into a ValueError naming the file and, where there is one, the tensor:
a corrupt or truncated file, a dtype other than float32, missing or unexpected keys, wrong shapes.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import safetensors
import safetensors.numpy

from .atomic import write_atomic

DEFAULT_METADATA = {"format": "pt"}


def save_file(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
              metadata: Mapping[str, str] | None = None) -> None:
    """Write float32 arrays to ``path`` atomically; metadata defaults to {"format": "pt"} as PyTorch writers use."""
    for key, value in tensors.items():
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
            raise TypeError(f"save_file: tensor {key!r} must be a float32 numpy.ndarray, got {got}")
    arrays = {key: np.ascontiguousarray(value) for key, value in tensors.items()}
    meta = dict(DEFAULT_METADATA if metadata is None else metadata)
    write_atomic(path, lambda tmp: safetensors.numpy.save_file(arrays, tmp, metadata=meta))


def _open_error(path: str, exc: Exception) -> ValueError:
    return ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}")


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """{key: (dtype, shape)} and the metadata of a safetensors file, without reading the tensors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such safetensors file: {path}")
    try:
        with safetensors.safe_open(path, framework="numpy") as fh:
            entries = {}
            for key in fh.keys():
                sl = fh.get_slice(key)
                entries[key] = (sl.get_dtype(), tuple(sl.get_shape()))
            return entries, dict(fh.metadata() or {})
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise _open_error(path, exc) from None


def load_file(path: str | os.PathLike, expected: Mapping[str, tuple[int, ...]] | None = None
              ) -> dict[str, np.ndarray]:
    """Read every tensor of ``path`` as a float32 array.

    With ``expected`` ({key: shape}), the file must hold exactly those keys with exactly those
    shapes; the error names the key and both shapes.
    """
    path = os.fspath(path)
    header, _ = read_header(path)
    bad = {key: dtype for key, (dtype, _) in header.items() if dtype != "F32"}
    if bad:
        key, dtype = next(iter(sorted(bad.items())))
        raise ValueError(f"{path}: tensor {key!r} has dtype {dtype}; peftc reads float32 (F32) tensors only "
                         f"({len(bad)} tensor(s) affected)")
    if expected is not None:
        check_keys_and_shapes(path, {key: shape for key, (_, shape) in header.items()}, expected)
    try:
        tensors = safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise _open_error(path, exc) from None
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in tensors.items()}


def check_keys_and_shapes(source: str, found: Mapping[str, tuple[int, ...]],
                          expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ValueError unless ``found`` has exactly the keys of ``expected`` with the same shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: {len(missing)} missing key(s) {missing[:4]}, "
                         f"{len(unexpected)} unexpected key(s) {unexpected[:4]}")
    for key in sorted(expected):
        if tuple(found[key]) != tuple(expected[key]):
            raise ValueError(f"{source}: tensor {key!r} has shape {tuple(found[key])}, "
                             f"expected {tuple(expected[key])}")
