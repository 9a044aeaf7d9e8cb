"""Fashion-MNIST IDX loading from the Debian dataset-fashion-mnist files, and header validation."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from peftc.data import fashion_mnist as fm

HAVE_DATA = os.path.isfile(os.path.join(fm.DEFAULT_ROOT, "t10k-images-idx3-ubyte.gz"))


@pytest.mark.skipif(not HAVE_DATA, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_test_split_shapes_range_and_balance():
    x, y = fm.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (10000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.array_equal(np.bincount(y), np.full(10, 1000))
    assert y[:5].tolist() == [9, 2, 1, 1, 6]


@pytest.mark.skipif(not HAVE_DATA, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_train_split_has_60000_images():
    x, y = fm.load_fashion_mnist("train")
    assert x.shape == (60000, 28, 28) and np.array_equal(np.bincount(y), np.full(10, 6000))


def _write_idx(path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">{1 + len(shape)}I", magic, *shape) + payload)


def test_read_idx_rejects_wrong_magic_and_truncated_payload(tmp_path):
    p = tmp_path / "a.gz"
    _write_idx(p, 0x0801, (4,), bytes(4))
    assert fm.read_idx(p, 0x0801, 1).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="magic number"):
        fm.read_idx(p, 0x0803, 1)
    _write_idx(p, 0x0803, (2, 3, 3), bytes(17))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\) \(18 bytes\).*17 bytes"):
        fm.read_idx(p, 0x0803, 3)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        fm.load_fashion_mnist("valid")
