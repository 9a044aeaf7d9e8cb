"""RowAdapters: which adapter each row of a mixed-adapter batch runs (``model(batch, adapter_names=[...])``).

The model sets one on every adapter layer and modules_to_save wrapper for the length of a forward; a
layer that sees ``rows`` rows (a batch row is ``rows // B`` consecutive token rows) asks it for the
adapters it runs and each row's index into them (-1: the base layer alone). Inside
:func:`packed_batch_rows` (a forward on a batch's real tokens only) a layer's rows are tokens, and each
token runs the adapter of its batch row.
"""
from __future__ import annotations

import contextlib
from collections.abc import Container, Iterator, Sequence
from contextvars import ContextVar

import numpy as np

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in adapter_names

# (batch row of each token row, batch size) while a model runs packed tokens (see packed_batch_rows)
_PACKED_ROWS: ContextVar[tuple[np.ndarray, int] | None] = ContextVar("peftc_packed_batch_rows", default=None)


@contextlib.contextmanager
def packed_batch_rows(batch_row: np.ndarray, batch_size: int) -> Iterator[None]:
    """Inside the block the layers' inputs are the real-token rows of a packed batch of ``batch_size`` rows:
    input row n belongs to batch row ``batch_row[n]`` (a model's packed forward says so around its layers).

    Example:
        >>> with packed_batch_rows(np.array([0, 0, 1]), 2):
        ...     RowAdapters.from_names(["a", "b"]).row_index(3, held={"a", "b"})[1].tolist()
        [0, 0, 1]
    """
    token = _PACKED_ROWS.set((batch_row, int(batch_size)))
    try:
        yield
    finally:
        _PACKED_ROWS.reset(token)


class RowAdapters:
    """Batch row b runs ``names[codes[b]]``, or no adapter where ``codes[b] == -1`` ("__base__").

    Example:
        >>> ra = RowAdapters.from_names(["a", "__base__", "b", "a"])
        >>> ra.names, ra.codes.tolist()
        (['a', 'b'], [0, -1, 1, 0])
        >>> ra.row_index(8, held={"b"})[1].tolist()   # two token rows per batch row, a layer holding only "b"
        [-1, -1, -1, -1, 0, 0, -1, -1]
    """

    def __init__(self, names: list[str], codes: np.ndarray) -> None:
        self.names = names
        self.codes = codes

    @classmethod
    def from_names(cls, adapter_names: Sequence[str]) -> RowAdapters:
        names = list(dict.fromkeys(n for n in adapter_names if n != BASE_ADAPTER))
        lookup = {n: k for k, n in enumerate(names)}
        codes = np.array([lookup.get(n, -1) for n in adapter_names], dtype=np.int64)
        return cls(names, codes)

    @property
    def batch_size(self) -> int:
        return int(self.codes.size)

    def rows_per_batch_row(self, rows: int, where: str) -> int:
        """How many consecutive rows each batch row spans in an input of ``rows`` rows (ValueError if none fits)."""
        b = self.batch_size
        if b == 0 or rows % b:
            raise ValueError(f"{where}: adapter_names has {b} entries, but the layer sees {rows} rows, which is not "
                             f"a multiple of {b} (adapter_names needs one name per batch row, and batch-major "
                             f"inputs: no skip_padding / packed tokens)")
        return rows // b

    def row_index(self, rows: int, held: Container[str], where: str = "adapter layer") -> tuple[list[str], np.ndarray]:
        """(the adapters of this batch that a layer holding ``held`` runs, each row's index into them or -1)."""
        used = [n for n in self.names if n in held]
        local = {n: k for k, n in enumerate(used)}
        lut = np.array([local.get(n, -1) for n in self.names] + [-1], dtype=np.int64)  # code -1 -> lut[-1] = -1
        packed = _PACKED_ROWS.get()
        if packed is None:
            return used, np.repeat(lut[self.codes], self.rows_per_batch_row(rows, where))
        batch_row, batch_size = packed
        if batch_size != self.batch_size or rows != batch_row.size:
            raise ValueError(f"{where}: adapter_names has {self.batch_size} entries and the layer sees {rows} rows, "
                             f"but the packed batch has {batch_size} rows holding {batch_row.size} real tokens")
        return used, lut[self.codes][batch_row]
