"""FSCILNetwork: a BERT encoder with mean pooling and the heads FSCIL base training uses.

``forward(batch)`` returns a dict of named outputs, so one objective (:mod:`peftc.fscil.objective`) can
combine the losses the switched-on tricks need; ``backward(douts)`` takes the dict of their gradients
(a missing or None entry means no gradient) and runs the encoder's backward once. In training mode with
``two_views`` / ``pretext`` the batch is extended, inside one encoder pass, with a second view of every row
(span deletion, :func:`peftc.fscil.views.span_deletion`) and with chunk-rotated rows; in eval mode only the
rows themselves pass. Outputs (B rows in the batch, H the width):

- ``pooled`` (B, H): the mean-pooled features (what the prototype classifier reads);
- ``logits`` (B, C): the linear classifier on ``pooled`` (base classes and any pseudo-classes);
- ``feat`` (B, H): ``pooled`` L2-normalised (the pre-assigned-prototype alignment reads it);
- ``z`` (2B, P): the projection head on both views, L2-normalised (rows b and B+b are views of one text);
- ``pretext_logits`` (B, 4) and ``pretext_labels`` (B,): the rotation head on the rotated rows.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..models.bert import BertModel
from ..models.classifier import trim_padding
from ..nn import Linear, MeanPooling, Module
from ..random import Generator
from .views import PRETEXT_CLASSES, chunk_rotation, span_deletion


class FSCILNetwork(Module):
    """``FSCILNetwork(bert, num_classes, projection_dim=0, pretext=False, deletion=0.15, generator=None)``.

    Module names follow :class:`peftc.models.classifier.SentenceClassifier` (``bert.encoder.layer.0...``,
    ``classifier``), plus ``projector`` and ``pretext_head`` when asked for.
    """

    def __init__(self, bert: BertModel, num_classes: int, projection_dim: int = 0, pretext: bool = False,
                 deletion: float = 0.15, generator: Generator | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        g = generator or Generator(0)
        hidden = bert.config.hidden_size
        self.bert = bert
        self.pooling = MeanPooling()
        self.classifier = Linear(hidden, num_classes, generator=g)
        if projection_dim:
            self.projector = Linear(hidden, projection_dim, generator=g)
        if pretext:
            self.pretext_head = Linear(hidden, PRETEXT_CLASSES, generator=g)
        self.deletion = float(deletion)
        self.pretext_active = True  # a phase without the rotation task (self-supervised pre-training) turns it off
        self.views = Generator(g.seed + 7919)
        self._cache: dict | None = None

    @property
    def two_views(self) -> bool:
        return hasattr(self, "projector")

    @property
    def pretext(self) -> bool:
        return hasattr(self, "pretext_head") and self.pretext_active

    def pooled(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, H) mean-pooled features (no heads, no views), in the current mode; in eval mode the encoder
        runs on the real tokens only (``skip_padding``: no backward follows an eval forward)."""
        ids, mask = trim_padding(input_ids, attention_mask)
        return self.pooling(self.bert(ids, mask, skip_padding=not self.training), mask)

    def forward(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        n = ids.shape[0]
        parts, masks = [ids], [mask]
        out: dict[str, np.ndarray] = {}
        views = self.training and self.two_views
        pretext = self.training and self.pretext
        if views:
            v_ids, v_mask = span_deletion(ids, mask, self.views.uniform((n,)), self.deletion)
            parts.append(v_ids)
            masks.append(v_mask)
        if pretext:
            k = np.minimum((self.views.uniform((n,)) * PRETEXT_CLASSES).astype(np.int64), PRETEXT_CLASSES - 1)
            r_ids, out["pretext_labels"] = chunk_rotation(ids, mask, k)
            parts.append(r_ids)
            masks.append(mask)
        pooled = self.pooled(np.concatenate(parts), np.concatenate(masks))
        out["pooled"] = pooled[:n]
        out["logits"] = self.classifier(pooled[:n])
        out["feat"], feat_norm = F.l2_normalize_forward(pooled[:n])
        cache = {"n": n, "rows": pooled.shape, "feat": (out["feat"], feat_norm)}
        if views:
            z, z_norm = F.l2_normalize_forward(self.projector(pooled[:2 * n]))
            out["z"] = z
            cache["z"] = (z, z_norm)
        if pretext:
            out["pretext_logits"] = self.pretext_head(pooled[2 * n if views else n:])
        self._cache = cache
        return out

    def backward(self, dy: dict[str, np.ndarray | None], *, dx: np.ndarray | None = None,
                 input_grad: bool = True) -> None:
        """Accumulate the parameter gradients given the gradients of the named outputs (token ids have none)."""
        self._no_input_grad(dx, "a batch of token ids")
        if self._cache is None:
            raise RuntimeError("FSCILNetwork.backward called before forward")
        c = self._cache
        n = c["n"]
        dpooled = F.zeros(c["rows"])
        if dy.get("pooled") is not None:
            dpooled[:n] += dy["pooled"]
        if dy.get("logits") is not None:
            self.classifier.backward(dy["logits"], dx=dpooled[:n])
        if dy.get("feat") is not None:
            F.l2_normalize_backward(dy["feat"], *c["feat"], dx=dpooled[:n])
        if dy.get("z") is not None:
            dproj = F.zeros(c["z"][0].shape)
            F.l2_normalize_backward(dy["z"], *c["z"], dx=dproj)
            self.projector.backward(dproj, dx=dpooled[:2 * n])
        if dy.get("pretext_logits") is not None:
            start = 2 * n if "z" in c else n
            self.pretext_head.backward(dy["pretext_logits"], dx=dpooled[start:])
        if any(p.requires_grad for _, p in self.bert.named_parameters()):
            self.bert.backward(self.pooling.backward(dpooled))
        return None
