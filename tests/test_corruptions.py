"""Fashion-MNIST-C generator: determinism, range, severity ordering, filters against SciPy, cache."""
from __future__ import annotations

import os

import numpy as np
import pytest

from peftc.data import corruptions as cc
from peftc.data import fashion_mnist as fm

HAVE_DATA = os.path.isfile(os.path.join(fm.DEFAULT_ROOT, "t10k-images-idx3-ubyte.gz"))
# distortion that need not grow with severity in the original recipe: glass blur's pixel swaps dominate
# at low sigma, and the elastic recipe shrinks the affine part as it grows the displacement field
NOT_MONOTONE = {"glass_blur", "elastic_transform"}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    if HAVE_DATA:
        return fm.load_fashion_mnist("test")[0][:64]
    rng = np.random.default_rng(0)
    return np.floor(rng.random((64, 28, 28)) * 256).clip(0, 255).astype(np.float32) / 255


@pytest.mark.parametrize("name", cc.CORRUPTIONS)
def test_corruption_is_deterministic_in_range_and_shaped(images, name):
    a = cc.corrupt(images, name, 3, seed=7)
    b = cc.corrupt(images, name, 3, seed=7)
    assert a.shape == images.shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(np.round(a * 255), a * np.float32(255))  # on the uint8 grid
    assert not np.array_equal(a, images)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "glass_blur",
                                  "motion_blur", "elastic_transform"])
def test_random_corruptions_differ_between_seeds(images, name):
    assert not np.array_equal(cc.corrupt(images, name, 5, seed=0), cc.corrupt(images, name, 5, seed=1))


@pytest.mark.parametrize("name", sorted(set(cc.CORRUPTIONS) - NOT_MONOTONE))
def test_distortion_grows_with_severity(images, name):
    d = [np.abs(cc.corrupt(images, name, s) - images).mean() for s in cc.SEVERITIES]
    assert d[4] > d[0] and all(b >= a * 0.95 for a, b in zip(d, d[1:])), d


def test_corrupt_rejects_bad_inputs(images):
    with pytest.raises(ValueError, match="unknown corruption"):
        cc.corrupt(images, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        cc.corrupt(images, "contrast", 6)
    with pytest.raises(ValueError, match="28, 28"):
        cc.corrupt(images[:, :20], "contrast", 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cc.corrupt(images * 255, "contrast", 1)


def test_gaussian_filter_matches_scipy_border_rules():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).random((2, 28, 28))
    for mode, pad in (("reflect", "symmetric"), ("nearest", "edge"), ("mirror", "reflect")):
        ours = cc._gaussian_filter(x, 1.3, 3.0, pad)
        ref = ndimage.gaussian_filter(x, (0, 1.3, 1.3), mode=mode, truncate=3.0)
        np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_linear_zoom_matches_scipy_zoom_order_1():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).random((25, 25))
    m = cc._linear_matrix(25, 30)
    np.testing.assert_allclose(m @ x @ m.T, ndimage.zoom(x, 30 / 25, order=1, grid_mode=False), atol=1e-12)


def test_bilinear_sample_matches_scipy_map_coordinates():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    x = rng.random((1, 28, 28))
    rows, cols = rng.uniform(-3, 30, (2, 1, 28, 28))
    ours = cc._bilinear_sample(x, rows, cols, "symmetric")
    ref = ndimage.map_coordinates(x[0], [rows[0], cols[0]], order=1, mode="reflect")
    np.testing.assert_allclose(ours[0], ref, atol=1e-12)


def test_box_resize_averages_areas_and_keeps_constants():
    m = cc._box_matrix(28, 18)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(cc._box_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])


def test_numpy_jpeg_is_close_to_pillow(images):
    pytest.importorskip("PIL")
    x = images.astype(np.float64)
    pil = cc._jpeg_compression(x, 5, None, use_pillow=True)
    ours = cc._jpeg_compression(x, 5, None, use_pillow=False)
    assert np.abs(pil - ours).mean() * 255 < 1.0  # same quantisation, different rounding details


@pytest.mark.skipif(not HAVE_DATA, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_c_is_cached_and_reloaded_identically(tmp_path, monkeypatch):
    calls = []
    real = cc.corrupt_uint8
    monkeypatch.setattr(cc, "corrupt_uint8", lambda *a, **k: calls.append(1) or real(*a, **k))
    x1, y1 = cc.load_fashion_mnist_c("contrast", 2, cache=tmp_path)
    x2, y2 = cc.load_fashion_mnist_c("contrast", 2, cache=tmp_path)
    assert len(calls) == 1 and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (10000, 28, 28) and x1.dtype == np.float32
    assert os.path.isfile(tmp_path / "fashion_mnist_c" / "seed0" / "contrast_2.npy")
