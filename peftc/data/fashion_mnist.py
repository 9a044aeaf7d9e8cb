"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``: 60k train / 10k test, 28x28, 10 classes.

The files are gzipped IDX: a big-endian header (magic ``0x00000803`` for uint8 images with three
dimensions, ``0x00000801`` for uint8 labels with one), the sizes, then the raw bytes. Every header
field and the payload length are checked, so a truncated or mismatched file raises ``ValueError``
instead of yielding a silently short array.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}
_IMAGE_MAGIC, _LABEL_MAGIC = 0x00000803, 0x00000801
ROWS = COLS = 28


def read_idx(path: str | os.PathLike, magic: int, dims: int) -> np.ndarray:
    """A uint8 array from a gzipped IDX file, after checking magic number, rank and payload size."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than the {header}-byte IDX header")
    got_magic, *shape = struct.unpack(f">{1 + dims}I", data[:header])
    if got_magic != magic:
        raise ValueError(f"{path}: IDX magic number {got_magic:#010x}, expected {magic:#010x}")
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(f"{path}: header says shape {tuple(shape)} ({expected} bytes), "
                         f"file holds {len(data) - header} bytes after the header")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: images (N, 28, 28) float32 in [0, 1], labels (N,) int64 in [0, 10).

    ``split`` is "train" (N = 60000) or "test" (N = 10000). ``root`` defaults to
    ``$PEFTC_FASHION_MNIST_DIR`` or the Debian location ``/usr/share/datasets/fashion-mnist``.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = os.fspath(root or os.environ.get("PEFTC_FASHION_MNIST_DIR") or DEFAULT_ROOT)
    image_file, label_file, count = _FILES[split]
    paths = [os.path.join(root, name) for name in (image_file, label_file)]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Fashion-MNIST file {path} not found: install the Debian package "
                                    f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                                    f"or set PEFTC_FASHION_MNIST_DIR")
    images = read_idx(paths[0], _IMAGE_MAGIC, 3)
    labels = read_idx(paths[1], _LABEL_MAGIC, 1)
    if images.shape != (count, ROWS, COLS) or labels.shape != (count,):
        raise ValueError(f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape}, "
                         f"expected ({count}, {ROWS}, {COLS}) and ({count},)")
    if labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"Fashion-MNIST {split}: label {int(labels.max())} outside [0, {len(CLASS_NAMES)})")
    return (images.astype(np.float32) / np.float32(255.0)), labels.astype(np.int64)
