"""FSCILObjective: the base-training loss, a weighted sum over the outputs of :class:`FSCILNetwork`.

    loss = ce * CE(logits, labels)                                   incremental-frozen base training
         + supcon * SupCon(z, [labels, labels], temperature)         two views per row (trick: supcon / ssl)
         + etf * mean (feat . etf_targets[label] - 1)^2 / 2           pre-assigned prototypes (trick: etf)
         + pretext * CE(pretext_logits, pretext_labels)               chunk rotation (trick: pretext)

A zero weight drops its term. Rows labelled ``align_classes`` or above (the pseudo-classes) take no part in
the ETF term (they have no pre-assigned prototype); rows labelled -100 count in no term. ``forward(outputs,
labels)`` returns the float, ``backward()`` the dict of output gradients that :meth:`FSCILNetwork.backward`
takes; ``last`` holds the last forward's unweighted terms.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..nn.loss import CrossEntropyLoss


class FSCILObjective:
    """``FSCILObjective(ce=1.0, supcon=0.0, temperature=0.1, etf=0.0, etf_targets=None, align_classes=None,
    pretext=0.0)``; ``etf_targets`` (K, H) unit rows are needed when ``etf > 0``.

    >>> FSCILObjective(ce=1.0, supcon=0.5).weights()
    {'ce': 1.0, 'supcon': 0.5}
    """

    def __init__(self, ce: float = 1.0, supcon: float = 0.0, temperature: float = 0.1, etf: float = 0.0,
                 etf_targets: np.ndarray | None = None, align_classes: int | None = None, pretext: float = 0.0) -> None:
        if min(ce, supcon, etf, pretext) < 0 or not temperature > 0:
            raise ValueError(f"loss weights must be >= 0 and temperature > 0, got ce={ce}, supcon={supcon}, "
                             f"etf={etf}, pretext={pretext}, temperature={temperature}")
        if etf and (etf_targets is None or etf_targets.ndim != 2):
            raise ValueError("etf > 0 needs etf_targets, a (K, H) array of unit rows")
        self.ce, self.supcon, self.etf, self.pretext = float(ce), float(supcon), float(etf), float(pretext)
        self.temperature = float(temperature)
        self.etf_targets = None if etf_targets is None else np.ascontiguousarray(etf_targets, np.float32)
        self.align_classes = align_classes
        self._ce, self._pretext = CrossEntropyLoss(), CrossEntropyLoss()
        self._cache: dict = {}
        self.last: dict[str, float] = {}

    def weights(self) -> dict[str, float]:
        return {k: w for k, w in (("ce", self.ce), ("supcon", self.supcon), ("etf", self.etf),
                                  ("pretext", self.pretext)) if w}

    def forward(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
        labels = np.ascontiguousarray(labels, np.int64)
        self.last, self._cache = {}, {}
        if self.ce:
            self.last["ce"] = self._ce.forward(outputs["logits"], labels)
        if self.supcon:
            z = outputs["z"]
            both = np.ascontiguousarray(np.concatenate([labels, labels]))
            loss, _, probs = F.supcon_forward(z, both, self.temperature)
            self.last["supcon"] = loss
            self._cache["supcon"] = (probs, z, both)
        if self.etf:
            keep = labels if self.align_classes is None else np.where(labels < self.align_classes, labels,
                                                                      F.IGNORE_INDEX)
            keep = np.ascontiguousarray(keep, np.int64)
            loss, _, dots = F.etf_align_forward(outputs["feat"], self.etf_targets, keep)
            self.last["etf"] = loss
            self._cache["etf"] = (dots, keep, outputs["feat"].shape)
        if self.pretext:
            self.last["pretext"] = self._pretext.forward(outputs["pretext_logits"], outputs["pretext_labels"])
        return float(sum(w * self.last[k] for k, w in self.weights().items()))

    __call__ = forward

    def backward(self, dloss: float = 1.0) -> dict[str, np.ndarray | None]:
        grads: dict[str, np.ndarray | None] = {}
        if "ce" in self.last:
            grads["logits"] = self._ce.backward(dloss * self.ce)
        if "supcon" in self._cache:
            probs, z, both = self._cache["supcon"]
            grads["z"] = F.zeros(z.shape)
            F.supcon_backward(dloss * self.supcon, probs, z, both, self.temperature, dz=grads["z"])
        if "etf" in self._cache:
            dots, keep, shape = self._cache["etf"]
            grads["feat"] = F.zeros(shape)
            F.etf_align_backward(dloss * self.etf, dots, self.etf_targets, keep, dfeat=grads["feat"])
        if "pretext" in self.last:
            grads["pretext_logits"] = self._pretext.backward(dloss * self.pretext)
        return grads
