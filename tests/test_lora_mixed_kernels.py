"""LoRA with one adapter per row (lora_mixed_*): C against the NumPy reference, against each row run with its
adapter alone (lora_forward / lora_backward), float64 finite differences of the reference, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import _C
from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

IC, OC = 6, 5
RANKS = (3, 1, 4)

# row index patterns: interleaved, contiguous blocks (the in-place path), one adapter, none, an adapter
# without rows, a single row, no row at all
INDEXES = {
    "interleaved": [2, -1, 0, 1, 0, 2, -1, 1],
    "blocks": [0, 0, 0, 1, 1, 2, 2, 2],
    "one_adapter": [1, 1, 1, 1],
    "all_base": [-1, -1, -1],
    "adapter_without_rows": [2, 0, 2, -1, 2],
    "single_row": [2],
    "no_rows": [],
}


def adapters(rng, ranks=RANKS, bias=(True, False, True)):
    a = [f32(rng, r, IC) for r in ranks]
    b = [f32(rng, OC, r) for r in ranks]
    bb = [f32(rng, OC) if with_bias else None for with_bias in bias[:len(ranks)]]
    scale = np.float32([F.lora_scaling(r, 8.0, use_rslora=k == 1) for k, r in enumerate(ranks)])
    return a, b, bb, scale


def index(name):
    return np.array(INDEXES[name], dtype=np.int64)


def groups(idx, k_count):
    """(adapter, rows, first position in u) per adapter with rows, as the kernel orders u."""
    out, first = [], 0
    for k in range(k_count):
        rows = np.flatnonzero(idx == k)
        if rows.size:
            out.append((k, rows, first))
        first += rows.size
    return out


@pytest.mark.parametrize("pattern", INDEXES)
def test_lora_mixed_forward_matches_reference(rng, pattern):
    idx = index(pattern)
    x, w, bias = f32(rng, idx.size, IC), f32(rng, OC, IC), f32(rng, OC)
    a, b, bb, scale = adapters(rng)
    y, u = F.lora_mixed_forward(x, w, bias, a, b, bb, scale, idx)
    y_ref, u_ref = R.lora_mixed_forward(x, w, bias, a, b, bb, scale, idx)
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    for k, rows, first in groups(idx, len(a)):
        assert_close(u[first:first + rows.size, :RANKS[k]], u_ref[first:first + rows.size, :RANKS[k]], 1e-5, 1e-5,
                     f"u of adapter {k}")


@pytest.mark.parametrize("pattern", ["interleaved", "blocks"])
def test_lora_mixed_rows_equal_each_row_with_its_adapter_alone(rng, pattern):
    idx = index(pattern)
    x, w = f32(rng, idx.size, IC), f32(rng, OC, IC)
    a, b, bb, scale = adapters(rng)
    y, _ = F.lora_mixed_forward(x, w, None, a, b, bb, scale, idx)
    for n, k in enumerate(idx):
        if k < 0:
            alone = F.linear_forward(x[n:n + 1], w)
        else:
            alone = F.lora_forward(x[n:n + 1], w, None, a[k], b[k], bb[k], float(scale[k]))[0]
        assert_close(y[n:n + 1], alone, 1e-5, 1e-5, f"row {n} (adapter {k})")


def backward_case(rng, idx):
    x, w = f32(rng, idx.size, IC), f32(rng, OC, IC)
    a, b, bb, scale = adapters(rng)
    _, u = F.lora_mixed_forward(x, w, None, a, b, bb, scale, idx)
    return x, w, a, b, scale, u, f32(rng, idx.size, OC)


def grads_like(a, b):
    return ([np.zeros_like(m) for m in a], [np.zeros_like(m) for m in b],
            [np.zeros(OC, dtype=np.float32) for _ in a])


@pytest.mark.parametrize("pattern", INDEXES)
def test_lora_mixed_backward_matches_reference(rng, pattern):
    idx = index(pattern)
    x, w, a, b, scale, u, dy = backward_case(rng, idx)
    got, want = grads_like(a, b), grads_like(a, b)
    dx, dx_ref = np.zeros_like(x), np.zeros_like(x)
    F.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dx=dx, dlora_A=got[0], dlora_B=got[1], dlora_bias=got[2])
    R.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dx=dx_ref, dlora_A=want[0], dlora_B=want[1],
                          dlora_bias=want[2])
    assert_close(dx, dx_ref, 1e-5, 1e-5, "dx")
    for field, g, g_ref in zip(("dlora_A", "dlora_B", "dlora_bias"), got, want):
        for k in range(len(a)):
            assert_close(g[k], g_ref[k], 1e-5, 1e-5, f"{field}[{k}]")


def test_lora_mixed_backward_equals_each_adapter_on_its_rows_alone(rng):
    idx = index("interleaved")
    x, w, a, b, scale, u, dy = backward_case(rng, idx)
    da, db, dbb = grads_like(a, b)
    dx = np.zeros_like(x)
    F.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dx=dx, dlora_A=da, dlora_B=db, dlora_bias=dbb)
    dx_alone = np.zeros_like(x)
    dx_alone[idx < 0] = dy[idx < 0] @ w
    for k in range(len(a)):
        rows = np.flatnonzero(idx == k)
        _, _, uk = F.lora_forward(x[rows], w, None, a[k], b[k], None, float(scale[k]))
        dxk, dak, dbk, dbbk = (np.zeros((rows.size, IC), np.float32), np.zeros_like(a[k]), np.zeros_like(b[k]),
                               np.zeros(OC, np.float32))
        F.lora_backward(np.ascontiguousarray(dy[rows]), x[rows], uk, w, a[k], b[k], float(scale[k]), dx=dxk,
                        dlora_A=dak, dlora_B=dbk, dlora_bias=dbbk)
        dx_alone[rows] = dxk
        assert_close(da[k], dak, 1e-5, 1e-5, f"dlora_A[{k}]")
        assert_close(db[k], dbk, 1e-5, 1e-5, f"dlora_B[{k}]")
        assert_close(dbb[k], dbbk, 1e-5, 1e-5, f"dlora_bias[{k}]")
    assert_close(dx, dx_alone, 1e-5, 1e-5, "dx")


def test_lora_mixed_reference_backward_matches_finite_differences(rng):
    idx = index("interleaved")
    x, w, a, b, scale, _, dy = backward_case(rng, idx)
    x, w, dy = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    a = [m.astype(np.float64) for m in a]
    b = [m.astype(np.float64) for m in b]
    bb = [np.zeros(OC) for _ in a]
    scale = scale.astype(np.float64)

    def loss():
        return float((R.lora_mixed_forward(x, w, None, a, b, bb, scale, idx)[0] * dy).sum())

    _, u = R.lora_mixed_forward(x, w, None, a, b, bb, scale, idx)
    dx, da, db, dbb = np.zeros_like(x), [np.zeros_like(m) for m in a], [np.zeros_like(m) for m in b], \
        [np.zeros(OC) for _ in a]
    R.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dx=dx, dlora_A=da, dlora_B=db, dlora_bias=dbb)
    assert_close(dx, numerical_grad(loss, x), 1e-6, 1e-6, "dx")
    for k in range(len(a)):
        assert_close(da[k], numerical_grad(loss, a[k]), 1e-6, 1e-6, f"dlora_A[{k}]")
        assert_close(db[k], numerical_grad(loss, b[k]), 1e-6, 1e-6, f"dlora_B[{k}]")
        assert_close(dbb[k], numerical_grad(loss, bb[k]), 1e-6, 1e-6, f"dlora_bias[{k}]")


def test_lora_mixed_backward_accumulates_and_skips_missing_gradients(rng):
    idx = index("interleaved")
    x, w, a, b, scale, u, dy = backward_case(rng, idx)
    da, db, _ = grads_like(a, b)
    F.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dlora_A=da, dlora_B=[None, db[1], None])
    once = [m.copy() for m in da], db[1].copy()
    F.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dlora_A=da, dlora_B=[None, db[1], None])
    for k in range(len(a)):
        assert_close(da[k], 2 * once[0][k], 1e-6, 1e-6, f"dlora_A[{k}] accumulated")
    assert_close(db[1], 2 * once[1], 1e-6, 1e-6, "dlora_B[1] accumulated")
    assert not db[0].any() and not db[2].any()


def test_lora_mixed_scratch_is_reused_across_calls(rng):
    idx = index("interleaved")
    x, w = f32(rng, idx.size, IC), f32(rng, OC, IC)
    a, b, bb, scale = adapters(rng)
    work = np.full(F.lora_mixed_workspace_size(idx.size, idx.size, IC, OC, max(RANKS)), np.nan, dtype=np.float32)
    iwork = np.full(idx.size + len(a) + 1, -7, dtype=np.int64)
    y1, _ = F.lora_mixed_forward(x, w, None, a, b, bb, scale, idx, work=work, iwork=iwork)
    y2, _ = F.lora_mixed_forward(x, w, None, a, b, bb, scale, idx, work=work, iwork=iwork)
    assert np.array_equal(y1, y2) and np.isfinite(y1).all()


def test_lora_mixed_matches_torch_autograd(rng, torch):
    """torch computes each row with its adapter by masking: y = x W^T + b + sum_k [idx == k] s_k (x A_k^T B_k^T + c_k)."""
    idx = index("interleaved")
    x, w, bias = f32(rng, idx.size, IC), f32(rng, OC, IC), f32(rng, OC)
    a, b, bb, scale = adapters(rng)
    dy = f32(rng, idx.size, OC)
    y, u = F.lora_mixed_forward(x, w, bias, a, b, bb, scale, idx)
    da, db, dbb = grads_like(a, b)
    dx = np.zeros_like(x)
    F.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dx=dx, dlora_A=da, dlora_B=db, dlora_bias=dbb)

    lin = torch.nn.functional.linear
    xt = torch.tensor(x, requires_grad=True)
    at = [torch.tensor(m, requires_grad=True) for m in a]
    bt = [torch.tensor(m, requires_grad=True) for m in b]
    ct = [torch.tensor(m, requires_grad=True) if m is not None else None for m in bb]
    yt = lin(xt, torch.tensor(w), torch.tensor(bias))
    for k in range(len(a)):
        rows = torch.tensor((idx == k).astype(np.float32))[:, None]
        yt = yt + rows * float(scale[k]) * lin(lin(xt, at[k]), bt[k], ct[k])
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-5, "dx")
    for k in range(len(a)):
        assert_close(da[k], at[k].grad.numpy(), 1e-5, 1e-5, f"dlora_A[{k}]")
        assert_close(db[k], bt[k].grad.numpy(), 1e-5, 1e-5, f"dlora_B[{k}]")
        if ct[k] is not None:
            assert_close(dbb[k], ct[k].grad.numpy(), 1e-5, 1e-5, f"dlora_bias[{k}]")


# -- bad input -------------------------------------------------------------------------------------

def forward_args(rng, idx=None):
    idx = index("interleaved") if idx is None else idx
    a, b, bb, scale = adapters(rng)
    n = idx.size
    return [np.empty((n, OC), np.float32), np.empty((n, max(RANKS)), np.float32),
            np.empty(F.lora_mixed_workspace_size(n, F.lora_mixed_gathered_rows(idx, len(a)), IC, OC, max(RANKS)),
                     np.float32),
            np.empty(n + len(a) + 1, np.int64), f32(rng, n, IC), f32(rng, OC, IC), None, a, b, bb, scale, idx]


@pytest.mark.parametrize("value,fragment", [(3, "'idx[1]' = 3"), (-2, "'idx[1]' = -2")])
def test_lora_mixed_index_outside_the_adapters_raises_value_error(rng, value, fragment):
    args = forward_args(rng)
    args[11] = args[11].copy()
    args[11][1] = value
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        _C.lora_mixed_forward(*args)


def test_lora_mixed_adapter_count_mismatch_names_both_counts(rng):
    args = forward_args(rng)
    args[8] = args[8][:2]
    with pytest.raises(ValueError, match=r"'lora_B' holds 2 arrays, but 'scale' has shape \(3,\)"):
        _C.lora_mixed_forward(*args)


@pytest.mark.parametrize("position,entry,bad,fragment", [
    (7, 1, np.zeros((1, IC + 1), np.float32), "'lora_A[1]'"),
    (8, 2, np.zeros((OC, 3), np.float32), "'lora_B[2]'"),
    (8, 0, np.zeros((OC, 3), np.float64), "'lora_B[0]'"),
    (9, 0, np.zeros(OC + 1, np.float32), "'lora_bias[0]'"),
    (7, 0, None, "'lora_A[0]'"),
])
def test_lora_mixed_bad_adapter_entry_names_it(rng, position, entry, bad, fragment):
    args = forward_args(rng)
    seq = list(args[position])
    seq[entry] = bad
    args[position] = seq
    with pytest.raises((ValueError, TypeError)) as info:
        _C.lora_mixed_forward(*args)
    assert fragment in str(info.value), str(info.value)


def test_lora_mixed_rank_above_u_columns_raises_value_error(rng):
    args = forward_args(rng)
    args[1] = np.empty((args[1].shape[0], 3), np.float32)
    with pytest.raises(ValueError, match="adapter 2 has rank R = 4, but 'u' has only RM = 3"):
        _C.lora_mixed_forward(*args)


def test_lora_mixed_sequences_must_be_tuples_or_lists(rng):
    args = forward_args(rng)
    args[7] = np.stack([np.zeros((2, IC), np.float32)] * 3)
    with pytest.raises(TypeError, match="'lora_A' must be a tuple or list"):
        _C.lora_mixed_forward(*args)


def test_lora_mixed_output_overlapping_an_adapter_array_raises_value_error(rng):
    args = forward_args(rng)
    args[7] = [args[7][0], args[2][:IC].reshape(1, IC), args[7][2]]  # lora_A[1] lives in the scratch 'work'
    with pytest.raises(ValueError, match="'work' overlaps argument 'lora_A\\[1\\]'"):
        _C.lora_mixed_forward(*args)
    idx = index("interleaved")
    x, w, a, b, scale, u, dy = backward_case(rng, idx)
    da = [np.zeros_like(m) for m in a]
    with pytest.raises(ValueError, match="'dlora_A\\[0\\]' overlaps argument 'lora_A\\[0\\]'"):
        F.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dlora_A=[a[0], da[1], da[2]])
    with pytest.raises(ValueError, match="'dlora_A\\[(0|2)\\]' overlaps argument 'dlora_A\\[(0|2)\\]'"):
        shared = np.zeros((4, IC), np.float32)  # dlora_A[0] is the first rows of dlora_A[2]
        F.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dlora_A=[shared[:3], da[1], shared])


def test_lora_mixed_too_small_scratch_raises_value_error(rng):
    args = forward_args(rng)
    args[3] = args[3][:-1].copy()
    with pytest.raises(ValueError, match="'iwork' has 11 int64, needs N \\+ K \\+ 1 = 12"):
        _C.lora_mixed_forward(*args)
    args = forward_args(rng)
    args[2] = args[2][:-1].copy()
    with pytest.raises(ValueError, match="'work' has"):
        _C.lora_mixed_forward(*args)


@pytest.mark.parametrize("sizes", [(-1, 0, 2, 3, 4), (2, 3, 2, 3, 4), (2, 0, 2**62, 3, 4),
                                   (2**42, 0, 2**20, 2**20, 4)])
def test_lora_mixed_workspace_size_refuses_negative_or_overflowing_sizes(sizes):
    with pytest.raises(ValueError, match="lora_mixed_workspace_size"):
        F.lora_mixed_workspace_size(*sizes)


@pytest.mark.parametrize("pattern,gathered", [("interleaved", 2), ("blocks", 0), ("one_adapter", 0),
                                              ("all_base", 0), ("adapter_without_rows", 3), ("no_rows", 0)])
def test_lora_mixed_gathered_rows_counts_the_largest_scattered_group(pattern, gathered):
    assert F.lora_mixed_gathered_rows(index(pattern), len(RANKS)) == gathered


@pytest.mark.parametrize("pattern", ["blocks", "interleaved"])
def test_lora_mixed_runs_in_exactly_the_workspace_its_grouping_needs(rng, pattern):
    """A batch built adapter by adapter gathers nothing (scratch N*RM only); the wrapper refuses one float less."""
    idx = index(pattern)
    x, w, a, b, scale, _, dy = backward_case(rng, idx)
    need = F.lora_mixed_workspace_size(idx.size, F.lora_mixed_gathered_rows(idx, len(a)), IC, OC, max(RANKS))
    if pattern == "blocks":
        assert need == idx.size * max(RANKS)
    work = np.full(need, np.nan, dtype=np.float32)
    y, u = F.lora_mixed_forward(x, w, None, a, b, None, scale, idx, work=work)
    y_ref, _ = R.lora_mixed_forward(x, w, None, a, b, None, scale, idx)
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    dx, dx_ref = np.zeros_like(x), np.zeros_like(x)
    F.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dx=dx, work=work)
    R.lora_mixed_backward(dy, x, u, w, a, b, scale, idx, dx=dx_ref)
    assert_close(dx, dx_ref, 1e-5, 1e-5, "dx")
    with pytest.raises(ValueError, match=f"'work' has {need - 1} floats, needs {need}"):
        F.lora_mixed_forward(x, w, None, a, b, None, scale, idx, work=work[:-1])
