"""The student's adaptive fusion module: OUR stand-in for AF-STip's, whose formulas were not published in
what we could read. The paper names three parts (multi-dimensional query enhancement, an external memory,
multi-stage convolutional fusion) and says the module captures local and global features at modest cost;
the gated form below is the generic one of the method spec, not the paper's equation.

On a convolutional feature map X (N, d, H, W), with P = H W positions (or a sequence's hidden states
(N, d, T), P = T, with a (N, T) mask of the positions that count: then the mean and the softmax run over
those positions alone):

    h1 = mean_p X[:, :, p]                                  local (convolutional) stream
    a = softmax_p(w_att . X[:, :, p]),  h2 = sum_p a_p X[:, :, p]     global, attention-pooled stream
    q = W_q h1 + b_q,  r = softmax(q M^T / sqrt d) M         query-enhanced read-out of a learnable memory M (S, d)
    alpha = softmax(W_g [h1; h2; r] + b_g)                  one gate per stream (N, 3)
    out = LayerNorm(h1 + alpha_1 h1 + alpha_2 h2 + alpha_3 r)

W_g starts at zero (equal gates). :class:`FusionStudent` puts it between a small CNN's last block and its
head, switchable (``fusion=False`` is the plain CNN with global average pooling) so that its contribution
can be measured; :class:`peftc.distill.text.TextStudent` puts it on a small encoder's hidden states.
"""
from __future__ import annotations

import numpy as np

from ..models.cnn import SmallResNet
from ..nn import LayerNorm, Linear
from ..nn.module import Module, Parameter
from ..random import Generator


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_backward(p: np.ndarray, dp: np.ndarray, axis: int) -> np.ndarray:
    return p * (dp - (p * dp).sum(axis=axis, keepdims=True))


class AdaptiveFusion(Module):
    """Gated fusion of a local, a global (attention-pooled) and a memory stream: (N, d, H, W) or (N, d, P) ->
    (N, d); ``forward(x, mask=None)``, mask (N, P) nonzero at the positions that count (each row needs one).

    >>> f = AdaptiveFusion(8, memory_slots=4)
    >>> f.forward(np.ones((2, 8, 3, 3), np.float32)).shape
    (2, 8)
    >>> f.forward(np.ones((2, 8, 5), np.float32), mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])).shape
    (2, 8)
    """

    def __init__(self, dim: int, memory_slots: int = 16, seed: int = 0) -> None:
        g = Generator(seed)
        self.dim, self.slots = int(dim), int(memory_slots)
        self.att = Parameter(g.normal((dim,), 0.0, 1.0 / np.sqrt(dim)))
        self.query = Linear(dim, dim, generator=g)
        self.memory = Parameter(g.normal((memory_slots, dim), 0.0, 1.0))
        self.gate = Linear.from_weights(np.zeros((3, 3 * dim), np.float32), np.zeros(3, np.float32))
        self.norm = LayerNorm(dim)
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if x.ndim not in (3, 4) or x.shape[1] != self.dim:
            raise ValueError(f"AdaptiveFusion: x must be (N, {self.dim}, H, W) or (N, {self.dim}, P), got {x.shape}")
        n = x.shape[0]
        xf = x.reshape(n, self.dim, -1).astype(np.float32)
        logits = np.einsum("ndp,d->np", xf, self.att.data)
        if mask is None:
            keep = None
            h1 = xf.mean(axis=2)
        else:
            if mask.shape != (n, xf.shape[2]) or not np.all(np.count_nonzero(mask, axis=1)):
                raise ValueError(f"AdaptiveFusion: mask must be (N, P) = {(n, xf.shape[2])} with a kept position "
                                 f"in every row, got {mask.shape}")
            keep = (mask != 0).astype(np.float32) / np.count_nonzero(mask, axis=1, keepdims=True).astype(np.float32)
            h1 = np.einsum("ndp,np->nd", xf, keep)
            logits = np.where(mask != 0, logits, -np.inf)
        a = _softmax(logits, axis=1)
        h2 = np.einsum("ndp,np->nd", xf, a)
        q = self.query(h1)
        scale = np.float32(1.0 / np.sqrt(self.dim))
        m = self.memory.data
        att = _softmax(q @ m.T * scale, axis=1)
        r = att @ m
        alpha = _softmax(self.gate(np.ascontiguousarray(np.concatenate([h1, h2, r], axis=1))), axis=1)
        u = h1 + alpha[:, :1] * h1 + alpha[:, 1:2] * h2 + alpha[:, 2:] * r
        self._cache = (x.shape, xf, keep, h1, a, h2, q, att, r, alpha)
        return self.norm(np.ascontiguousarray(u, dtype=np.float32))

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        if self._cache is None:
            raise RuntimeError("AdaptiveFusion.backward called before forward")
        shape, xf, keep, h1, a, h2, q, att, r, alpha = self._cache
        d = self.dim
        du = self.norm.backward(np.ascontiguousarray(dy, dtype=np.float32))
        streams = (h1, h2, r)
        dalpha = np.stack([(du * s).sum(axis=1) for s in streams], axis=1)
        dg = self.gate.backward(np.ascontiguousarray(_softmax_backward(alpha, dalpha, 1), dtype=np.float32))
        dh1 = du * (1.0 + alpha[:, :1]) + dg[:, :d]
        dh2 = du * alpha[:, 1:2] + dg[:, d:2 * d]
        dr = du * alpha[:, 2:] + dg[:, 2 * d:]
        # memory read-out r = att M, att = softmax(q M^T / sqrt d)
        scale = 1.0 / np.sqrt(d)
        m = self.memory.data
        datt = dr @ m.T
        dlog = _softmax_backward(att, datt, 1) * scale
        dm = self.memory.grad_buffer()
        if dm is not None:
            dm += (att.T @ dr + dlog.T @ q).astype(np.float32)
        dh1 = dh1 + self.query.backward(np.ascontiguousarray(dlog @ m, dtype=np.float32))
        # attention pooling h2 = sum_p a_p X_p, a = softmax_p(w . X_p)
        da = np.einsum("ndp,nd->np", xf, dh2)
        ds = _softmax_backward(a, da, 1)
        datt_w = self.att.grad_buffer()
        if datt_w is not None:
            datt_w += np.einsum("ndp,np->d", xf, ds).astype(np.float32)
        if not input_grad:
            return None
        g = dh2[:, :, None] * a[:, None, :] + self.att.data[None, :, None] * ds[:, None, :]
        g += dh1[:, :, None] / xf.shape[2] if keep is None else dh1[:, :, None] * keep[:, None, :]
        g = g.reshape(shape).astype(np.float32)
        if dx is None:
            return g
        self._check_dx(dx, shape)[...] += g
        return dx


class FusionStudent(SmallResNet):
    """A small BatchNorm CNN student whose pooled features come from :class:`AdaptiveFusion` (``fusion=True``)
    or from global average pooling (``fusion=False``: exactly :class:`peftc.models.SmallResNet`).

    >>> s = FusionStudent((4, 8), 3, fusion=True)
    >>> s.forward(np.zeros((2, 1, 28, 28), np.float32)).shape
    (2, 3)
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32), num_classes: int = 10, seed: int = 0,
                 fusion: bool = True, memory_slots: int = 16) -> None:
        super().__init__(widths, num_classes, seed)
        self.fusion = AdaptiveFusion(widths[-1], memory_slots, seed + 1) if fusion else None

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        if self.fusion is None:
            return super().forward_features(x)
        return self.fusion(self.forward_map(x))

    def backward_features(self, dfeatures: np.ndarray, *, dx: np.ndarray | None = None,
                          input_grad: bool = True) -> np.ndarray | None:
        if self.fusion is None:
            return super().backward_features(dfeatures, dx=dx, input_grad=input_grad)
        return self.backward_map(self.fusion.backward(dfeatures), dx=dx, input_grad=input_grad)
