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
        """BatchNorm2d.forward's kernel: the fused one, keeping each channel's map, from which the backward
        (:meth:`BatchNorm2d.backward`, which masks ``dy`` to the positive outputs) rebuilds the ReLU's mask."""
        ch = self.num_features
        self._relu_map = (np.empty(ch, dtype=np.float32), np.empty(ch, dtype=np.float32))
        return F.batchnorm2d_relu_forward(x, *args, scale=self._relu_map[0], shift=self._relu_map[1])

    def __repr__(self) -> str:
        return "BatchNormReLU2d" + super().__repr__()[len("BatchNorm2d"):]
