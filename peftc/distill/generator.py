"""DAFL's image generator (Chen et al. 2019, their ``Generator``), built from peftc.nn modules:

    z (N, latent) -> Linear -> (N, c, s/4, s/4) -> BN -> up x2 -> conv3x3 (c -> c) -> BN(eps 0.8) -> LeakyReLU(0.2)
    -> up x2 -> conv3x3 (c -> c/2) -> BN(eps 0.8) -> LeakyReLU(0.2) -> conv3x3 (c/2 -> channels) -> tanh
    -> BN(channels, no affine)

DAFL's teachers read standardised images, which the final affine-free BN imitates. For a teacher of raw
pixels in a known range (Fashion-MNIST's SmallResNet: [0, 1]), ``pixel_range`` replaces that BN by the map
of tanh's (-1, 1) onto the range (our adaptation).

The three shape-and-elementwise steps without kernels of their own (nearest x2 upsampling, LeakyReLU,
tanh) are small NumPy modules here, each with the module backward contract. DAFL's defaults are
c = 128 and s = 32; s = 28 suits Fashion-MNIST.
"""
from __future__ import annotations

import numpy as np

from ..nn import BatchNorm2d, Conv2d, Linear
from ..nn.module import Module, ModuleList
from ..random import Generator


class Upsample2x(Module):
    """Nearest-neighbour x2 upsampling of (N, C, H, W); the backward sums each 2x2 block.

    >>> up = Upsample2x()
    >>> up.forward(np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)).shape
    (1, 1, 4, 4)
    >>> up.backward(np.ones((1, 1, 4, 4), np.float32)).ravel().tolist()
    [4.0, 4.0, 4.0, 4.0]
    """

    def __init__(self) -> None:
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        return np.ascontiguousarray(x.repeat(2, axis=2).repeat(2, axis=3))

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        if self._shape is None:
            raise RuntimeError("Upsample2x.backward called before forward")
        if not input_grad:
            return None
        n, c, h, w = self._shape
        g = dy.reshape(n, c, h, 2, w, 2).sum(axis=(3, 5), dtype=np.float32)
        if dx is None:
            return np.ascontiguousarray(g)
        self._check_dx(dx, self._shape)[...] += g
        return dx


class LeakyReLU(Module):
    """y = x for x > 0, slope * x otherwise (torch.nn.LeakyReLU).

    >>> LeakyReLU(0.2).forward(np.array([-1.0, 2.0], np.float32)).tolist()
    [-0.20000000298023224, 2.0]
    """

    def __init__(self, slope: float = 0.2) -> None:
        self.slope = float(slope)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return np.where(x > 0, x, np.float32(self.slope) * x).astype(np.float32)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        if self._x is None:
            raise RuntimeError("LeakyReLU.backward called before forward")
        if not input_grad:
            return None
        g = np.where(self._x > 0, dy, np.float32(self.slope) * dy).astype(np.float32)
        if dx is None:
            return g
        self._check_dx(dx, self._x.shape)[...] += g
        return dx


class Tanh(Module):
    """y = tanh(x); the backward uses the cached output (1 - y^2).

    >>> t = Tanh()
    >>> _ = t.forward(np.zeros(2, np.float32))
    >>> t.backward(np.ones(2, np.float32)).tolist()
    [1.0, 1.0]
    """

    def __init__(self) -> None:
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = np.tanh(x).astype(np.float32)
        return self._y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        if self._y is None:
            raise RuntimeError("Tanh.backward called before forward")
        if not input_grad:
            return None
        g = (dy * (1.0 - self._y * self._y)).astype(np.float32)
        if dx is None:
            return g
        self._check_dx(dx, self._y.shape)[...] += g
        return dx


class Rescale(Module):
    """y = scale * x + shift (fixed numbers, no parameters).

    >>> Rescale(0.5, 0.5).forward(np.array([-1.0, 1.0], np.float32)).tolist()
    [0.0, 1.0]
    """

    def __init__(self, scale: float, shift: float) -> None:
        self.scale, self.shift = float(scale), float(shift)
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        return (np.float32(self.scale) * x + np.float32(self.shift)).astype(np.float32)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        if self._shape is None:
            raise RuntimeError("Rescale.backward called before forward")
        if not input_grad:
            return None
        g = (np.float32(self.scale) * dy).astype(np.float32)
        if dx is None:
            return g
        self._check_dx(dx, self._shape)[...] += g
        return dx


class DAFLGenerator(Module):
    """G(z): (N, latent_dim) noise to (N, channels, size, size) images, DAFL's layout (module docstring).

    >>> g = DAFLGenerator(latent_dim=8, width=8, size=28)
    >>> g.forward(np.zeros((2, 8), np.float32)).shape
    (2, 1, 28, 28)
    """

    def __init__(self, latent_dim: int = 100, width: int = 64, size: int = 28, channels: int = 1,
                 seed: int = 0, pixel_range: tuple[float, float] | None = None) -> None:
        if size % 4 or width % 2 or latent_dim < 1:
            raise ValueError(f"DAFLGenerator: needs size divisible by 4, an even width and latent_dim >= 1; got "
                             f"size={size}, width={width}, latent_dim={latent_dim}")
        g = Generator(seed)
        self.latent_dim, self.width, self.init = latent_dim, width, size // 4
        self.l1 = Linear(latent_dim, width * self.init * self.init, generator=g)
        self.layers = ModuleList([
            BatchNorm2d(width), Upsample2x(), Conv2d(width, width, 3, padding=1, generator=g),
            BatchNorm2d(width, eps=0.8), LeakyReLU(0.2), Upsample2x(),
            Conv2d(width, width // 2, 3, padding=1, generator=g), BatchNorm2d(width // 2, eps=0.8), LeakyReLU(0.2),
            Conv2d(width // 2, channels, 3, padding=1, generator=g), Tanh(),
            BatchNorm2d(channels, affine=False) if pixel_range is None
            else Rescale((pixel_range[1] - pixel_range[0]) / 2, (pixel_range[1] + pixel_range[0]) / 2),
        ])

    def forward(self, z: np.ndarray) -> np.ndarray:
        h = self.l1(np.ascontiguousarray(z, dtype=np.float32))
        h = np.ascontiguousarray(h.reshape(len(z), self.width, self.init, self.init))
        for layer in self.layers:
            h = layer(h)
        return h

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        d = dy
        for layer in reversed(list(self.layers)):
            d = layer.backward(np.ascontiguousarray(d))
        return self.l1.backward(np.ascontiguousarray(d.reshape(len(d), -1)), dx=dx, input_grad=input_grad)
