"""FSCILObjective: the base-training loss, a weighted sum over the outputs of :class:`FSCILNetwork`.

``loss = ce * CE(logits, labels)``, the supervised loss of incremental-frozen base training; the tricks add
their terms here (see :class:`peftc.fscil.tricks.Tricks`). ``forward(outputs, labels)`` returns the float,
``backward()`` the dict of output gradients that :meth:`FSCILNetwork.backward` takes.
"""
from __future__ import annotations

import numpy as np

from ..nn.loss import CrossEntropyLoss


class FSCILObjective:
    """``FSCILObjective(ce=1.0)``; rows labelled -100 count in no term."""

    def __init__(self, ce: float = 1.0) -> None:
        if ce < 0:
            raise ValueError(f"loss weights must be >= 0, got ce={ce}")
        self.ce = float(ce)
        self._ce = CrossEntropyLoss()
        self.last: dict[str, float] = {}

    def forward(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        self.last = {}
        if self.ce:
            self.last["ce"] = self._ce.forward(outputs["logits"], labels)
        return float(sum(w * self.last[k] for k, w in (("ce", self.ce),) if k in self.last))

    __call__ = forward

    def backward(self, dloss: float = 1.0) -> dict[str, np.ndarray | None]:
        grads: dict[str, np.ndarray | None] = {}
        if "ce" in self.last:
            grads["logits"] = self._ce.backward(dloss * self.ce)
        return grads
