"""Fashion-MNIST-C: the Hendrycks & Dietterich (ICLR 2019) corruptions, rebuilt in NumPy for 28x28 grayscale.

Twelve of the fifteen benchmark types (the three "weather" types snow, frost and fog need
texture assets or colour and are left out; brightness is kept), five severities each. The
severity constants are those of the CIFAR-10-C script (32x32 images, the nearest size to 28x28);
the constants that are lengths in pixels (the elastic warp) are rescaled by 28/32, the others are
used as they are. Each function follows the original conventions: the image is on the [0, 1]
scale, the result is clipped to [0, 1] and quantised to uint8 by truncation (``uint8(255 x)``),
as the released data sets were.

Differences from the original tools, all deliberate:

* The original draws were unseeded; here every (corruption, severity, seed) has its own NumPy
  generator, so the same call returns identical bytes.
* OpenCV, scikit-image, SciPy and ImageMagick are replaced by small NumPy routines (separable
  Gaussian filter with each tool's border rule, bilinear zoom and remap, box resize). The motion
  blur is the shift-and-add approximation of ImageMagick used by ``imagecorruptions``.
* JPEG uses Pillow when it is importable, otherwise a baseline-JPEG luminance quantisation in
  NumPy (8x8 DCT, IJG quality scaling, no chroma, no entropy coding: the lossy part only).

The data set (:func:`load_fashion_mnist_c`) is the 10,000 test images, generated once and cached
as uint8 ``.npy`` files under ``$PEFTC_CACHE`` (default ``~/.cache/peftc``)/``fashion_mnist_c``.
"""
from __future__ import annotations

import io
import os
import zlib

import numpy as np

from ..io.atomic import write_atomic

from .fashion_mnist import load_fashion_mnist

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
SIZE = 28
_SCALE = SIZE / 32.0  # pixel lengths of the 32x32 recipe, rescaled

# -- shared filters ------------------------------------------------------------------------------
# numpy.pad modes for each tool's border rule: OpenCV BORDER_REFLECT_101 = "reflect",
# SciPy "reflect" = "symmetric", SciPy/scikit-image "nearest" = "edge".


def _gauss_kernel_1d(sigma: float, radius: int) -> np.ndarray:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2) if sigma > 0 else (t == 0).astype(np.float64)
    return k / k.sum()


def _correlate_1d(x: np.ndarray, k: np.ndarray, axis: int, pad_mode: str) -> np.ndarray:
    r = len(k) // 2
    widths = [(0, 0)] * x.ndim
    widths[axis] = (r, r)
    xp = np.pad(x, widths, mode=pad_mode)
    n = x.shape[axis]
    out = np.zeros_like(x, dtype=np.float64)
    for i, w in enumerate(k):
        if w != 0.0:
            out += w * np.take(xp, np.arange(i, i + n), axis=axis)
    return out


def _gaussian_filter(x: np.ndarray, sigma: float, truncate: float, pad_mode: str) -> np.ndarray:
    """Separable Gaussian over the last two axes, radius int(truncate * sigma + 0.5) as in SciPy."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return x.astype(np.float64)
    k = _gauss_kernel_1d(sigma, radius)
    return _correlate_1d(_correlate_1d(x, k, -1, pad_mode), k, -2, pad_mode)


def _correlate_2d(x: np.ndarray, kernel: np.ndarray, pad_mode: str) -> np.ndarray:
    r = kernel.shape[0] // 2
    xp = np.pad(x, [(0, 0), (r, r), (r, r)], mode=pad_mode)
    h, w = x.shape[1:]
    out = np.zeros_like(x, dtype=np.float64)
    for i, j in zip(*np.nonzero(kernel)):
        out += kernel[i, j] * xp[:, i:i + h, j:j + w]
    return out


def _fold(coord: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer coordinates into [0, n) by the border rule (mode as for numpy.pad)."""
    if mode == "edge":
        return np.clip(coord, 0, n - 1)
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        period = 2 * n - 2
        c = np.mod(coord, period)
        return np.where(c >= n, period - c, c)
    period = 2 * n  # "symmetric": ... 1 0 | 0 1 ... n-1 | n-1 ...
    c = np.mod(coord, period)
    return np.where(c >= n, period - 1 - c, c)


def _bilinear_sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """x (N, H, W) sampled at real coordinates rows, cols (N, H, W), borders by ``mode``."""
    n, h, w = x.shape
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    idx = np.arange(n)[:, None, None]
    out = np.zeros(rows.shape, dtype=np.float64)
    for dr, wr in ((0, 1.0 - fr), (1, fr)):
        for dc, wc in ((0, 1.0 - fc), (1, fc)):
            out += wr * wc * x[idx, _fold(r0 + dr, h, mode), _fold(c0 + dc, w, mode)]
    return out


def _linear_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of a corner-aligned linear resize (scipy.ndimage.zoom, order 1, along one axis)."""
    pos = np.arange(dst) * ((src - 1) / (dst - 1)) if dst > 1 else np.zeros(1)
    lo = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    m = np.zeros((dst, src))
    np.add.at(m, (np.arange(dst), lo), 1.0 - frac)
    np.add.at(m, (np.arange(dst), hi), frac)
    return m


def _box_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) area-average weights of a box resize (Pillow's BOX filter)."""
    edges = np.arange(dst + 1) * (src / dst)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(src)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


# -- the corruptions: each maps x (N, 28, 28) float64 in [0, 1] to an unclipped float array ---------

def _gaussian_noise(x, s, rng):
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1]
    return x + rng.normal(0.0, sigma, size=x.shape)


def _shot_noise(x, s, rng):
    c = (500, 250, 100, 75, 50)[s - 1]
    return rng.poisson(x * c) / c


def _impulse_noise(x, s, rng):
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[s - 1]
    out = x.copy()
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


def _defocus_blur(x, s, rng):
    radius, alias_blur = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[s - 1]
    t = np.arange(-8, 9, dtype=np.float64)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    k3 = _gauss_kernel_1d(alias_blur, 1)  # cv2.GaussianBlur(disk, (3, 3), alias_blur)
    disk = _correlate_1d(_correlate_1d(disk[None], k3, -1, "reflect"), k3, -2, "reflect")[0]
    return _correlate_2d(x, disk, "reflect")


def _glass_blur(x, s, rng):
    sigma, delta, iters = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[s - 1]
    y = np.floor(np.clip(_gaussian_filter(x, sigma, 4.0, "edge"), 0, 1) * 255.0) / 255.0
    n = np.arange(len(x))
    for _ in range(iters):
        for h in range(SIZE - delta, delta, -1):
            for w in range(SIZE - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2, len(x)))
                hp, wp = h + dy, w + dx
                a, b = y[n, h, w].copy(), y[n, hp, wp].copy()
                y[n, h, w], y[n, hp, wp] = b, a
    return _gaussian_filter(y, sigma, 4.0, "edge")


def _motion_blur(x, s, rng):
    radius, sigma = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))[s - 1]
    angle = np.deg2rad(rng.uniform(-45.0, 45.0, size=len(x)))
    width = 2 * radius + 1
    k = np.exp(-0.5 * (np.arange(width) / sigma) ** 2)
    k /= k.sum()
    n = np.arange(len(x))[:, None, None]
    base = np.arange(SIZE)
    out = np.zeros_like(x)
    for i in range(width):
        dy = -np.ceil(i * np.sin(angle) - 0.5).astype(np.int64)
        dx = -np.ceil(i * np.cos(angle) - 0.5).astype(np.int64)
        rows = np.clip(base[None, :] - dy[:, None], 0, SIZE - 1)[:, :, None]
        cols = np.clip(base[None, :] - dx[:, None], 0, SIZE - 1)[:, None, :]
        out += k[i] * x[n, rows, cols]
    return out


def _zoom_blur(x, s, rng):
    stop = (1.06, 1.11, 1.16, 1.21, 1.26)[s - 1]
    zooms = np.arange(1.0, stop, 0.01)
    out = x.copy()
    for z in zooms:
        ch = int(np.ceil(SIZE / z))
        top = (SIZE - ch) // 2
        m = _linear_matrix(ch, int(round(ch * z)))
        zoomed = m @ x[:, top:top + ch, top:top + ch] @ m.T
        trim = (zoomed.shape[1] - SIZE) // 2
        out += zoomed[:, trim:trim + SIZE, trim:trim + SIZE]
    return out / (len(zooms) + 1)


def _brightness(x, s, rng):
    # HSV value + c on a gray image (saturation 0) is a plain shift of the intensity.
    return x + (0.05, 0.1, 0.15, 0.2, 0.3)[s - 1]


def _contrast(x, s, rng):
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * c + mean


def _elastic_transform(x, s, rng):
    alpha, sigma, aff = (np.array(c) * SIZE for c in zip(
        (0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)))
    alpha, sigma, aff = alpha[s - 1], sigma[s - 1], aff[s - 1]
    n = len(x)
    # (1) random affine from three points moved by U(-aff, aff), OpenCV point order (x, y)
    center, sq = SIZE // 2, SIZE // 3
    pts1 = np.array([[center + sq, center + sq], [center + sq, center - sq], [center - sq, center - sq]], np.float64)
    pts2 = pts1[None] + rng.uniform(-aff, aff, size=(n, 3, 2))
    # inverse map dst -> src: solve [x' y' 1] A = [x y] for each image
    dst = np.concatenate([pts2, np.ones((n, 3, 1))], axis=2)
    inv = np.linalg.solve(dst, np.broadcast_to(pts1, (n, 3, 2)))  # (n, 3, 2)
    yy, xx = np.meshgrid(np.arange(SIZE, dtype=np.float64), np.arange(SIZE, dtype=np.float64), indexing="ij")
    src_x = xx[None] * inv[:, 0, 0, None, None] + yy[None] * inv[:, 1, 0, None, None] + inv[:, 2, 0, None, None]
    src_y = xx[None] * inv[:, 0, 1, None, None] + yy[None] * inv[:, 1, 1, None, None] + inv[:, 2, 1, None, None]
    warped = _bilinear_sample(x, src_y, src_x, "reflect")
    # (2) smooth random displacement fields, (3) bilinear remap
    dx = _gaussian_filter(rng.uniform(-1, 1, size=x.shape), sigma, 3.0, "symmetric") * alpha
    dy = _gaussian_filter(rng.uniform(-1, 1, size=x.shape), sigma, 3.0, "symmetric") * alpha
    return _bilinear_sample(warped, yy[None] + dy, xx[None] + dx, "symmetric")


def _pixelate(x, s, rng):
    small = int(SIZE * (0.95, 0.9, 0.85, 0.75, 0.65)[s - 1])
    down, up = _box_matrix(SIZE, small), _box_matrix(small, SIZE)
    # PIL resizes uint8 images, so each resize rounds to 0..255
    y = np.round(down @ np.floor(x * 255.0) @ down.T)
    return np.round(up @ y @ up.T) / 255.0


_JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64)


def _dct_matrix() -> np.ndarray:
    k, i = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    d = np.cos((2 * i + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return d


def jpeg_numpy(images_u8: np.ndarray, quality: int) -> np.ndarray:
    """The lossy part of baseline JPEG on grayscale uint8 (N, H, W): 8x8 DCT, IJG-scaled quantisation."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = np.clip(np.floor((_JPEG_LUMA * scale + 50) / 100), 1, 255)
    n, h, w = images_u8.shape
    ph, pw = -h % 8, -w % 8
    x = np.pad(images_u8.astype(np.float64), [(0, 0), (0, ph), (0, pw)], mode="edge") - 128.0
    blocks = x.reshape(n, (h + ph) // 8, 8, (w + pw) // 8, 8).transpose(0, 1, 3, 2, 4)
    d = _dct_matrix()
    coef = np.round(d @ blocks @ d.T / q) * q
    rec = (d.T @ coef @ d).transpose(0, 1, 3, 2, 4).reshape(n, h + ph, w + pw)[:, :h, :w]
    return np.clip(np.round(rec + 128.0), 0, 255).astype(np.uint8)


def _jpeg_compression(x, s, rng, use_pillow: bool | None = None):
    quality = (80, 65, 58, 50, 40)[s - 1]
    u8 = np.uint8(np.clip(x, 0, 1) * 255.0)
    if use_pillow is None:
        try:
            import PIL.Image  # noqa: F401
            use_pillow = True
        except ImportError:
            use_pillow = False
    if not use_pillow:
        return jpeg_numpy(u8, quality) / 255.0
    from PIL import Image
    out = np.empty_like(u8)
    for i, img in enumerate(u8):
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("L"))
    return out / 255.0


_FUNCS = {name: globals()[f"_{name}"] for name in CORRUPTIONS}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``images`` (N, 28, 28) in [0, 1] corrupted by ``name`` at ``severity`` (1..5): float32 in [0, 1].

    The output is quantised to 1/255 steps (truncation, as the original uint8 files). The same
    (images, name, severity, seed) always gives the same bytes.
    """
    return corrupt_uint8(images, name, severity, seed).astype(np.float32) / np.float32(255.0)


def corrupt_uint8(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """As :func:`corrupt`, returning the uint8 (N, 28, 28) array that is cached."""
    if name not in _FUNCS:
        raise ValueError(f"unknown corruption {name!r}; choose from {CORRUPTIONS}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"images must be (N, {SIZE}, {SIZE}), got {images.shape}")
    if not np.issubdtype(images.dtype, np.floating) or images.min() < 0 or images.max() > 1:
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype} "
                         f"in [{images.min()}, {images.max()}]")
    # one independent stream per (seed, corruption, severity); crc32 keeps it stable across runs
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), severity])
    out = _FUNCS[name](images.astype(np.float64), severity, rng)
    return np.uint8(np.clip(out, 0.0, 1.0) * 255.0)


def cache_root(cache: str | os.PathLike | None = None) -> str:
    """The peftc cache folder: ``cache``, else ``$PEFTC_CACHE``, else ``~/.cache/peftc``."""
    return os.fspath(cache or os.environ.get("PEFTC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "peftc"))


def load_fashion_mnist_c(name: str, severity: int, seed: int = 0, cache: str | os.PathLike | None = None,
                         root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of the Fashion-MNIST test set under ``name`` at ``severity``.

    images (10000, 28, 28) float32 in [0, 1], labels (10000,) int64. Generated on first use and
    cached as ``<cache>/fashion_mnist_c/seed<seed>/<name>_<severity>.npy`` (uint8; written to a
    temporary file, then renamed). ``root`` is passed to :func:`load_fashion_mnist`.
    """
    clean, labels = load_fashion_mnist("test", root)
    folder = os.path.join(cache_root(cache), "fashion_mnist_c", f"seed{seed}")
    path = os.path.join(folder, f"{name}_{severity}.npy")
    if os.path.isfile(path):
        data = np.load(path)
        if data.shape != clean.shape or data.dtype != np.uint8:
            raise ValueError(f"{path}: cached array is {data.dtype} {data.shape}, expected uint8 {clean.shape}")
    else:
        data = corrupt_uint8(clean, name, severity, seed)
        os.makedirs(folder, exist_ok=True)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, data)

        write_atomic(path, write)
    return data.astype(np.float32) / np.float32(255.0), labels
