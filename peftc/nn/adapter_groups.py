"""Mixed-adapter batches for adapter layers without a grouped kernel (SoRA, Hydra, Bone / MiSS, Bat).

LoRA's mixed batches run in one grouped kernel call (:func:`peftc.functional.lora_mixed_forward`). The other
adapter layers run each adapter's own single-adapter kernels on that adapter's rows instead: a slice of the
input when the rows are consecutive (a batch stacked adapter by adapter, or its packed real tokens), else the
rows gathered, and the rows without an adapter ("__base__") through the base layer alone. The frozen product
costs the same flops as one product over all the rows; each adapter's gradients come from its own rows.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from .._checks import as_rows

Rows = slice | np.ndarray  # a group's rows: a slice when they are consecutive


def row_groups(idx: np.ndarray, count: int) -> tuple[list[Rows], Rows | None]:
    """(the rows of each of ``count`` adapters, the rows of none) from each row's adapter index (-1: none); a
    group of consecutive rows is a slice.

    Example:
        >>> row_groups(np.array([0, 0, 1, -1, 1]), 2)
        ([slice(0, 2, None), array([2, 4])], slice(3, 4, None))
    """
    def rows(mask: np.ndarray) -> Rows | None:
        where = np.flatnonzero(mask)
        if where.size == 0:
            return None
        if where[-1] - where[0] + 1 == where.size:
            return slice(int(where[0]), int(where[-1]) + 1)
        return where

    return [rows(idx == k) for k in range(count)], rows(idx == -1)


class AdapterGroups:
    """Mixin for an adapter layer holding named adapters in ``self.adapters_by_name()`` ({name: record}): runs a
    mixed-adapter batch (``self.row_adapters`` set) group by group with the layer's ``_run(record, rows)`` ->
    (y, cache) and ``_grad(record, cache, dy, dx)`` (dx accumulated, or None), the single-adapter forward and
    backward of one record. The layer's base is a :class:`~peftc.nn.Linear` (``self.base``)."""

    _mixed_cache: tuple | None = None

    def adapters_by_name(self) -> dict[str, Any]:
        raise NotImplementedError

    def _record_dropout(self, record: Any) -> float:
        return 0.0

    def _forward_groups(self, x: np.ndarray) -> np.ndarray:
        name = type(self).__name__
        if getattr(self, "merged", False):
            raise RuntimeError("adapter_names (a mixed-adapter batch) on a merged layer: call unmerge first")
        if self.training and any(p.requires_grad for _, p in self.base.named_parameters()):
            raise NotImplementedError(f"{name}: adapter_names in training mode with a trainable base layer: the "
                                      f"base weight and bias are shared by the adapters; freeze them")
        rows = as_rows(x, "x", self.in_features)
        records = self.adapters_by_name()
        names, idx = self.row_adapters.row_index(rows.shape[0], records, name)
        dropping = [n for n in names if self._record_dropout(records[n]) > 0.0]
        if self.training and dropping:
            raise NotImplementedError(f"{name}: adapter_names in training mode with dropout (adapters {dropping}): "
                                      f"mixed-adapter batches run without dropout; call eval() or set it to 0")
        groups, base_rows = row_groups(idx, len(names))
        y = np.empty((rows.shape[0], self.out_features), dtype=np.float32)
        caches = []
        for n, sel in zip(names, groups):
            if sel is None:
                continue
            xk = rows[sel] if isinstance(sel, slice) else np.take(rows, sel, axis=0)
            yk, cache = self._run(records[n], xk)
            y[sel] = yk
            caches.append((sel, records[n], cache))
        if base_rows is not None:
            y[base_rows] = self.base.product(rows[base_rows] if isinstance(base_rows, slice)
                                             else np.take(rows, base_rows, axis=0))
        self._mixed_cache = (rows.shape, caches, base_rows)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _backward_groups(self, dy: np.ndarray, dx: np.ndarray | None, input_grad: bool) -> np.ndarray | None:
        shape, caches, base_rows = self._mixed_cache
        drows = as_rows(dy, "dy", self.out_features)
        out = None
        if input_grad:
            out = (F.zeros(shape) if dx is None
                   else self._check_dx(dx, (*dy.shape[:-1], self.in_features)).reshape(shape))
        for sel, record, cache in caches:
            if isinstance(sel, slice):
                self._grad(record, cache, drows[sel], None if out is None else out[sel])
                continue
            dxk = None if out is None else F.zeros((sel.size, shape[1]))
            self._grad(record, cache, np.take(drows, sel, axis=0), dxk)
            if out is not None:
                out[sel] += dxk
        if out is not None and base_rows is not None:
            dyb = drows[base_rows] if isinstance(base_rows, slice) else np.take(drows, base_rows, axis=0)
            dxb = F.zeros((dyb.shape[0], shape[1]))
            F.linear_backward(dyb, None, self.base.weight.data, dx=dxb)
            out[base_rows] += dxb
        if out is None:
            return None
        return dx if dx is not None else out.reshape(*dy.shape[:-1], self.in_features)
