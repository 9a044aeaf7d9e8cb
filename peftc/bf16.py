"""bfloat16 frozen weights: rounding, packing, the frozen products, and which instruction set runs them.

A frozen weight is packed once (:class:`PackedWeight`: bf16, round to nearest even, rows padded to a
multiple of 32) and then used by :func:`linear_forward` (y = x W^T + b) and :func:`linear_backward`
(dx += dy W); activations, outputs and accumulation stay float32. The kernel and its per-path error
bounds are described in ``csrc/bf16_gemm.h``.

The path (instruction set) is chosen per call: the fastest this CPU runs, or the one the environment
variable ``PEFTC_BF16_PATH`` (``avx512bf16``, ``avx512f``, ``avx2``, ``generic``) forces; forcing one the
CPU lacks raises RuntimeError.
"""
from __future__ import annotations

import os

import numpy as np

from . import _C

PATHS = ("generic", "avx2", "avx512f", "avx512bf16")  # the kernel's path numbers, in order
ENV_PATH = "PEFTC_BF16_PATH"
_CPU_PATHS = tuple(_C.bf16_cpu_paths())


def cpu_paths() -> list[str]:
    """The bf16 paths this CPU can run, fastest first.

    >>> cpu_paths()[-1]
    'generic'
    """
    return list(_CPU_PATHS)


def selected_path() -> str:
    """The path the products run on: ``PEFTC_BF16_PATH`` if set (RuntimeError when the CPU cannot run it,
    ValueError for an unknown name), else the fastest of :func:`cpu_paths`.

    >>> selected_path() in cpu_paths()
    True
    """
    forced = os.environ.get(ENV_PATH)
    if not forced:
        return _CPU_PATHS[0]
    if forced not in PATHS:
        raise ValueError(f"{ENV_PATH}={forced!r}: expected one of {', '.join(PATHS)}")
    if forced not in _CPU_PATHS:
        raise RuntimeError(f"{ENV_PATH}={forced!r}: this CPU cannot run that path (it lacks the instructions); "
                           f"it runs {', '.join(_CPU_PATHS)}")
    return forced


def _path_number(path: str | None) -> int:
    name = selected_path() if path is None else path
    if name not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)} or None, got {name!r}")
    return PATHS.index(name)


def padded_in_features(in_features: int) -> int:
    """The row length of a packed weight: ``in_features`` rounded up to a multiple of 32.

    >>> padded_in_features(384), padded_in_features(10)
    (384, 32)
    """
    return (int(in_features) + 31) // 32 * 32


def round_bf16(x: np.ndarray) -> np.ndarray:
    """bf16(x), round to nearest with ties to even, as uint16 bit patterns (float32 C-contiguous x).

    >>> round_bf16(np.array([1.0, 1.00390625], dtype=np.float32))  # 1 + 2^-8 is a tie: to even
    array([16256, 16256], dtype=uint16)
    """
    out = np.empty(x.shape, dtype=np.uint16)
    _C.bf16_round(out, x)
    return out


def bf16_to_float32(h: np.ndarray) -> np.ndarray:
    """The float32 values of bf16 bit patterns (exact).

    >>> bf16_to_float32(np.array([16256], dtype=np.uint16))
    array([1.], dtype=float32)
    """
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class PackedWeight:
    """A frozen (out_features, in_features) weight in bf16, packed for the bf16 products.

    Holds only the packed uint16 array (out_features x padded_in_features x 2 bytes): no float32 copy.
    It is not a :class:`~peftc.nn.Parameter` (it never trains): ``requires_grad`` is False and
    ``grad_buffer()`` None, so a layer's gradient code treats it as a frozen weight.

    >>> w = PackedWeight(np.ones((3, 4), dtype=np.float32))
    >>> w.shape, w.nbytes, w.to_float32()[0]
    ((3, 4), 192, array([1., 1., 1., 1.], dtype=float32))
    """

    __slots__ = ("packed", "in_features")
    requires_grad = False
    grad = None

    def __init__(self, weight: np.ndarray) -> None:
        if not isinstance(weight, np.ndarray) or weight.ndim != 2:
            got = f"{weight.dtype} {weight.shape}" if isinstance(weight, np.ndarray) else type(weight).__name__
            raise ValueError(f"PackedWeight: weight must be a 2-D (out_features, in_features) float32 array, got {got}")
        self.in_features = int(weight.shape[1])
        self.packed = np.empty((weight.shape[0], padded_in_features(self.in_features)), dtype=np.uint16)
        _C.bf16_pack(self.packed, weight)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.in_features)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    @property
    def data(self) -> np.ndarray:
        raise TypeError("a bf16 PackedWeight holds no float32 array: use to_float32() for a (rounded) copy, or "
                        "peftc.bf16.linear_forward / linear_backward for the products")

    def grad_buffer(self) -> None:
        return None

    @property
    def bits(self) -> np.ndarray:
        """The bf16 values as their raw 16-bit patterns: a (out_features, in_features) uint16 view of the
        packed array (no copy, rows strided past the padding). ``bits.view`` of float32 is not valid: widen
        with :meth:`to_float32`.

        >>> PackedWeight(np.full((2, 3), 1.0, np.float32)).bits[0]  # 1.0 in bf16 is 0x3F80
        array([16256, 16256, 16256], dtype=uint16)
        """
        return self.packed[:, :self.in_features]

    def copy_(self, value: np.ndarray, name: str = "weight") -> None:
        """Overwrite the values in place from ``value``, shaped like the weight: uint16 bf16 bit patterns (as
        :attr:`bits` gives them) are copied, float32 values are rounded to nearest even. Any other dtype or
        shape raises ValueError naming ``name``.

        >>> w = PackedWeight(np.zeros((2, 3), np.float32)); w.copy_(np.full((2, 3), 1.5, np.float32))
        >>> w.to_float32()[1]
        array([1.5, 1.5, 1.5], dtype=float32)
        """
        if not isinstance(value, np.ndarray) or value.shape != self.shape:
            got = value.shape if isinstance(value, np.ndarray) else type(value).__name__
            raise ValueError(f"{name}: a bf16 weight of shape {self.shape} needs an array of that shape, got {got}")
        if value.dtype == np.uint16:
            self.bits[...] = value
        elif value.dtype == np.float32:
            _C.bf16_pack(self.packed, np.ascontiguousarray(value))
        else:
            raise ValueError(f"{name}: a bf16 weight takes uint16 bit patterns or float32 values, got {value.dtype}")

    def to_float32(self) -> np.ndarray:
        """A new (out_features, in_features) float32 array of the bf16 values."""
        out = np.empty(self.shape, dtype=np.float32)
        _C.bf16_unpack(out, self.packed)
        return out

    def __repr__(self) -> str:
        return f"PackedWeight(shape={self.shape}, dtype=bfloat16)"


def _check_packed(weight: PackedWeight, features: int, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(weight, PackedWeight):
        raise TypeError(f"weight must be a peftc.bf16.PackedWeight, got {type(weight).__name__}")
    if weight.in_features != features:
        raise ValueError(f"'{name}' has shape {shape}, so in_features = {features}, but the packed weight has "
                         f"shape {weight.shape}")


def linear_forward(x: np.ndarray, weight: PackedWeight, bias: np.ndarray | None = None, *,
                   out: np.ndarray | None = None, accumulate: bool = False, path: str | None = None) -> np.ndarray:
    """y = x W^T + bias with x (N, in) float32 and a packed bf16 W; with ``accumulate``, ``out`` += that.

    ``path``: one of :data:`PATHS` (default :func:`selected_path`).

    >>> w = PackedWeight(np.eye(2, dtype=np.float32))
    >>> linear_forward(np.array([[1.0, 2.0]], dtype=np.float32), w)
    array([[1., 2.]], dtype=float32)
    """
    _check_packed(weight, x.shape[-1] if getattr(x, "ndim", 0) == 2 else -1, "x", getattr(x, "shape", ()))
    number = _path_number(path)
    if accumulate and out is None:
        raise ValueError("linear_forward: accumulate=True needs out (the array to add into)")
    y = np.empty((x.shape[0], weight.shape[0]), dtype=np.float32) if out is None else out
    size = _C.bf16_linear_workspace_size(x.shape[0], x.shape[1], number)
    work = np.empty(size, dtype=np.float32) if size else None
    _C.bf16_linear_forward(y, work, x, weight.packed, bias, accumulate, number)
    return y


def linear_backward(dy: np.ndarray, weight: PackedWeight, *, dx: np.ndarray, path: str | None = None) -> None:
    """dx += dy W with dy (N, out) float32 and a packed bf16 W (the frozen layer's input gradient).

    >>> w = PackedWeight(np.eye(2, dtype=np.float32)); dx = np.zeros((1, 2), dtype=np.float32)
    >>> linear_backward(np.array([[1.0, 2.0]], dtype=np.float32), w, dx=dx); dx
    array([[1., 2.]], dtype=float32)
    """
    _check_packed(weight, dx.shape[-1] if getattr(dx, "ndim", 0) == 2 else -1, "dx", getattr(dx, "shape", ()))
    _C.bf16_linear_backward(dx, dy, weight.packed, _path_number(path))
