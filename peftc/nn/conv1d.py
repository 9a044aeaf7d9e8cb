"""Conv1D: Hugging Face's GPT-2 linear layer, y = x W + b with W stored (in_features, out_features).

peftc's kernels take a linear weight as torch does, (out_features, in_features), so a Conv1D is a
:class:`~peftc.nn.Linear` whose checkpoint tensor is transposed once, when the layer is built from
it (:meth:`Conv1D.from_hf_weight`), and transposed back when it is written out (:meth:`hf_weight`).
Everything that works on a Linear (LoRA and the other adapters, merging, EVA) then works on it
unchanged; what differs is the file layout, which is why PEFT needs ``fan_in_fan_out=True`` for
these layers: its LoRA factors have the same shapes as on a Linear, A (r, in) and B (out, r), and
only a merged weight is stored transposed.
"""
from __future__ import annotations

import numpy as np

from .linear import Linear


class Conv1D(Linear):
    """A GPT-2 ``Conv1D`` layer (``transformers.pytorch_utils.Conv1D``): ``Conv1D(nf, nx)`` has nx inputs and
    nf outputs, as in Hugging Face.

    >>> layer = Conv1D.from_hf_weight(np.ones((4, 6), np.float32), np.zeros(6, np.float32))
    >>> layer.in_features, layer.out_features, layer.hf_weight().shape
    (4, 6, (4, 6))
    """

    def __init__(self, nf: int, nx: int, generator=None) -> None:
        super().__init__(nx, nf, bias=True, generator=generator)

    @classmethod
    def from_hf_weight(cls, weight: np.ndarray, bias: np.ndarray | None) -> Conv1D:
        """Build from Hugging Face's arrays: weight (in_features, out_features), bias (out_features,). The weight
        is copied once into the (out_features, in_features) layout the kernels read; the bias is used in place."""
        if not isinstance(weight, np.ndarray) or weight.ndim != 2:
            got = weight.shape if isinstance(weight, np.ndarray) else type(weight).__name__
            raise ValueError(f"Conv1D weight must be a 2-D (in_features, out_features) array, got {got}")
        return cls.from_weights(np.ascontiguousarray(weight.T, dtype=np.float32), bias)

    def hf_weight(self) -> np.ndarray:
        """The weight in Hugging Face's layout, (in_features, out_features): a transposed view, not a copy."""
        return self.weight.data.T

    def __repr__(self) -> str:
        return f"Conv1D(nf={self.out_features}, nx={self.in_features})"
