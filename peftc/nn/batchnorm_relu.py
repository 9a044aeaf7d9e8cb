"""BatchNormReLU2d: a BatchNorm2d whose output goes through a ReLU, in one fused kernel each way."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .batchnorm import BatchNorm2d


class BatchNormReLU2d(BatchNorm2d):
    """``relu(BatchNorm2d(x))``: the same parameters, buffers, modes and state-dict names as
    :class:`BatchNorm2d` (so it is one for TTA configuration and checkpoints), with the ReLU fused
    into the normalisation pass and its backward into the batch-norm backward. Caches its output."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        mode = self.mode
        batch_stats = mode != "eval"
        update = mode == "train" and self.running_mean is not None
        run = (self.running_mean, self.running_var) if (update or not batch_stats) else (None, None)
        y, mean, rstd = F.batchnorm2d_relu_forward(x, *run, self.weight.data if self.weight is not None else None,
                                                   self.bias.data if self.bias is not None else None, batch_stats,
                                                   self.momentum, self.eps)
        if update:
            self.num_batches_tracked += 1
        self._cache = (x, mean, rstd, batch_stats, y)
        return y

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the affine gradients (when trainable) and return dx, or None with ``input_grad=False``."""
        if self._cache is None:
            raise RuntimeError("BatchNormReLU2d.backward called before forward")
        x, mean, rstd, batch_stats, y = self._cache
        dx = F.zeros(x.shape) if input_grad else None
        F.batchnorm2d_relu_backward(dy, y, x, mean, rstd, self.weight.data if self.weight is not None else None,
                                    batch_stats, dx=dx,
                                    dweight=self.weight.grad_buffer() if self.weight is not None else None,
                                    dbias=self.bias.grad_buffer() if self.bias is not None else None)
        return dx

    def __repr__(self) -> str:
        return "BatchNormReLU2d" + super().__repr__()[len("BatchNorm2d"):]
