"""PackedTokens: the real tokens of a padded (B, T) batch stored back to back as (N, H) rows.

A forward on the real tokens only (``BertModel``'s packed forward, training or inference) holds its
hidden states as the (N, H) rows of the mask's real positions in row-major order: every per-token layer
(linear maps and their adapters, LayerNorm, GELU, dropout) runs on those rows alone, and the attention,
the one step that mixes tokens, on each sequence's rows (a contiguous block of them) by themselves,
which is what the mask leaves of a padded batch's attention. Dropout draws, for each real token, what
the padded batch draws at its position, so a packed training step equals the padded one.
"""
from __future__ import annotations

import numpy as np


class PackedTokens:
    """The real token positions of a (B, T) ``attention_mask`` (nonzero = real).

    ``index`` (N,): the real positions in the flattened (B*T) batch; ``offsets`` (B+1,): sequence b is rows
    ``offsets[b]:offsets[b+1]``; ``starts`` (B,): the position of each row's first real token;
    ``batch_row`` (N,): each token's batch row; ``contiguous``: every row's real tokens form one run (right
    or left padding), which a training forward needs (the attention's dropout is drawn per padded position).

    Example:
        >>> p = PackedTokens(np.array([[1, 1, 0], [0, 1, 1]]))
        >>> p.index.tolist(), p.offsets.tolist(), p.starts.tolist(), p.contiguous
        ([0, 1, 4, 5], [0, 2, 4], [0, 1], True)
    """

    def __init__(self, attention_mask: np.ndarray) -> None:
        if attention_mask.ndim != 2:
            raise ValueError(f"attention_mask must be (B, T), got shape {attention_mask.shape}")
        self.mask = attention_mask
        real = attention_mask != 0
        self.index = np.flatnonzero(real.reshape(-1))
        counts = np.count_nonzero(real, axis=1)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        t = attention_mask.shape[1]
        self.batch_row = self.index // t if t else self.index
        first = np.where(counts > 0, real.argmax(axis=1), 0).astype(np.int64)
        last = np.where(counts > 0, t - 1 - real[:, ::-1].argmax(axis=1), -1)
        self.starts = first
        self.contiguous = bool(np.all(last - first + 1 == counts))

    @property
    def count(self) -> int:
        """N, the number of real tokens."""
        return int(self.index.size)

    @property
    def seq_len(self) -> int:
        """T, the padded width."""
        return int(self.mask.shape[1])

    @property
    def positions(self) -> int:
        """B*T, the positions of the padded batch."""
        return int(self.mask.size)

    def gather(self, x: np.ndarray) -> np.ndarray:
        """(B, T, H) -> the (N, H) rows of the real tokens (a new C-contiguous array)."""
        return np.take(x.reshape(-1, x.shape[-1]), self.index, axis=0)

    def scatter(self, rows: np.ndarray) -> np.ndarray:
        """(N, H) rows -> (B, T, H), zero at the padding."""
        out = np.zeros((self.mask.size, rows.shape[-1]), dtype=rows.dtype)
        out[self.index] = rows
        return out.reshape(*self.mask.shape, rows.shape[-1])
