"""BatchNormReLU2d: a BatchNorm2d whose output goes through a ReLU, in one fused kernel each way."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .batchnorm import BatchNorm2d


class BatchNormReLU2d(BatchNorm2d):
    """``relu(BatchNorm2d(x))``: the same parameters, buffers, modes and state-dict names as
    :class:`BatchNorm2d` (so it is one for TTA configuration and checkpoints), with the ReLU fused
    into the normalisation pass and its backward into the batch-norm backward. The backward rebuilds
    the ReLU's mask from x and the forward's per-channel map (the same bits as testing the output), so
    it keeps no reference to the output and reads one array fewer."""

    def _forward_kernel(self, x: np.ndarray, *args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BatchNorm2d.forward's kernel: the fused one, keeping each channel's map for the backward."""
        ch = self.num_features
        self._map = (np.empty(ch, dtype=np.float32), np.empty(ch, dtype=np.float32))
        return F.batchnorm2d_relu_forward(x, *args, scale=self._map[0], shift=self._map[1])

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the affine gradients (when trainable) and return dx, or None with ``input_grad=False``;
        ``dy`` is masked to the forward's positive outputs (the ReLU's backward, inside the kernel)."""
        if self._cache is None:
            raise RuntimeError("BatchNormReLU2d.backward called before forward")
        return super().backward(dy, input_grad, relu_map=self._map)

    def __repr__(self) -> str:
        return "BatchNormReLU2d" + super().__repr__()[len("BatchNorm2d"):]
