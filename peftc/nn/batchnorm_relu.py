"""BatchNormReLU2d: a BatchNorm2d whose output goes through a ReLU, in one fused kernel each way."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .batchnorm import BatchNorm2d


class BatchNormReLU2d(BatchNorm2d):
    """``relu(BatchNorm2d(x))``: the same parameters, buffers, modes and state-dict names as
    :class:`BatchNorm2d` (so it is one for TTA configuration and checkpoints), with the ReLU fused
    into the normalisation pass and its backward into the batch-norm backward. Caches its output."""

    _forward_kernel = staticmethod(F.batchnorm2d_relu_forward)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = super().forward(x)
        return self._y

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the affine gradients (when trainable) and return dx, or None with ``input_grad=False``;
        ``dy`` is masked by the cached output (the ReLU's backward, inside the kernel)."""
        if self._cache is None:
            raise RuntimeError("BatchNormReLU2d.backward called before forward")
        return super().backward(dy, input_grad, relu_out=self._y)

    def __repr__(self) -> str:
        return "BatchNormReLU2d" + super().__repr__()[len("BatchNorm2d"):]
