"""The bf16 frozen linear kernels (csrc/bf16_gemm.h): round-to-nearest-even, packing, and the forward and
input-gradient products on every path this CPU runs, against float64 products of the same bf16-rounded
weights, within the error bounds the header states; the run-time path choice; bad input."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from peftc import _C
from peftc import bf16

from .test_threaded_kernels import run_with_threads

U = 2.0 ** -24   # float32 unit roundoff
U_BF = 2.0 ** -8  # bf16 unit roundoff
RUNNABLE = bf16.cpu_paths()
# shapes with every kind of edge: k-tails of 1..31 past a vector, rows and output columns not a multiple of
# any register block, a row count above the threads' minimum
SHAPES = [(1, 1, 1), (5, 7, 3), (13, 70, 11), (4, 33, 5), (9, 96, 17), (37, 384, 50), (300, 129, 40)]


def rne_reference(x: np.ndarray) -> np.ndarray:
    """bf16 bit patterns of float32 x, round to nearest even, NaN kept quiet: the NumPy statement of the rule."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def rounded(w: np.ndarray) -> np.ndarray:
    return bf16.bf16_to_float32(rne_reference(w)).astype(np.float64)


def test_round_is_nearest_even_on_ties_nan_inf_and_denormals(rng):
    special = np.array([1.0, 1.00390625, 1.01171875, -1.00390625, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan, 0.0,
                        -0.0, 1e-40, -1e-45, 2.0 ** -126], dtype=np.float32)
    bits = rng.integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([special, bits, rng.standard_normal(2000).astype(np.float32)])
    got = bf16.round_bf16(x)
    want = rne_reference(x)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.all(np.isnan(bf16.bf16_to_float32(got[nan])))
    # 1 + 2^-8 is half-way between 1 and 1 + 2^-7: to the even one (1); 1 + 3 * 2^-8 to 1 + 2^-6
    assert list(got[:3]) == [0x3F80, 0x3F80, 0x3F82]
    assert bf16.bf16_to_float32(got[4:6]).tolist() == [np.inf, -np.inf]  # past the largest bf16


def test_pack_rounds_each_weight_and_pads_rows_with_zeros(rng):
    w = rng.standard_normal((5, 70)).astype(np.float32)
    packed = bf16.PackedWeight(w)
    assert packed.packed.shape == (5, 96) and packed.nbytes == 5 * 96 * 2
    assert np.array_equal(packed.packed[:, :70], rne_reference(w))
    assert not packed.packed[:, 70:].any()
    assert np.array_equal(packed.to_float32(), rounded(w).astype(np.float32))


def forward_bound(path: str, x, wr, b, y_in) -> np.ndarray:
    """The header's bound on |y - y64| for each entry."""
    ic = x.shape[1]
    scale = np.abs(x.astype(np.float64)) @ np.abs(wr).T + (0 if b is None else np.abs(b)) + np.abs(y_in)
    per_term = (ic + 2) * U + (U_BF if path == "avx512bf16" else 0.0)
    return per_term * scale


@pytest.mark.parametrize("path", RUNNABLE)
@pytest.mark.parametrize("n,ic,oc", SHAPES)
@pytest.mark.parametrize("bias,accumulate", [(False, False), (True, False), (True, True)])
def test_forward_within_the_stated_bound_of_float64(rng, path, n, ic, oc, bias, accumulate):
    x = rng.standard_normal((n, ic)).astype(np.float32)
    w = rng.standard_normal((oc, ic)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32) if bias else None
    y_in = rng.standard_normal((n, oc)).astype(np.float32) if accumulate else np.zeros((n, oc), np.float32)
    wr = rounded(w)
    y = y_in.copy()
    bf16.linear_forward(x, bf16.PackedWeight(w), b, out=y, accumulate=accumulate, path=path)
    want = x.astype(np.float64) @ wr.T + (0 if b is None else b) + y_in
    err = np.abs(y - want)
    bound = forward_bound(path, x, wr, b, y_in)
    assert np.all(err <= bound), f"{path}: max error {err.max():.3g}, worst error/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("path", RUNNABLE)
@pytest.mark.parametrize("n,ic,oc", SHAPES)
def test_backward_accumulates_within_the_stated_bound_of_float64(rng, path, n, ic, oc):
    dy = rng.standard_normal((n, oc)).astype(np.float32)
    w = rng.standard_normal((oc, ic)).astype(np.float32)
    dx_in = rng.standard_normal((n, ic)).astype(np.float32)
    wr = rounded(w)
    dx = dx_in.copy()
    bf16.linear_backward(dy, bf16.PackedWeight(w), dx=dx, path=path)
    want = dx_in + dy.astype(np.float64) @ wr
    bound = (oc + 1) * U * (np.abs(dy.astype(np.float64)) @ np.abs(wr) + np.abs(dx_in))
    err = np.abs(dx - want)
    assert np.all(err <= bound), f"{path}: max error {err.max():.3g}, worst error/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("path", RUNNABLE)
def test_products_spanning_many_packed_blocks_stay_within_the_bound(rng, path):
    """Shapes past every block of the widening paths' packed panels (rows past a row block, k past a reduction
    block, output columns past a column block, tails of each): the blocks join into one chain per entry."""
    n, ic, oc = 203, 811, 530
    x = rng.standard_normal((n, ic)).astype(np.float32)
    w = rng.standard_normal((oc, ic)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    wr, pw = rounded(w), bf16.PackedWeight(w)
    for accumulate in (False, True):
        y_in = rng.standard_normal((n, oc)).astype(np.float32) if accumulate else np.zeros((n, oc), np.float32)
        y = y_in + 1.0 if not accumulate else y_in.copy()  # overwritten: what it held must not show
        bf16.linear_forward(x, pw, b, out=y, accumulate=accumulate, path=path)
        err, bound = np.abs(y - (x.astype(np.float64) @ wr.T + b + y_in)), forward_bound(path, x, wr, b, y_in)
        assert np.all(err <= bound), f"{path} forward ({accumulate=}): worst error/bound {(err / bound).max():.3g}"
    dy = rng.standard_normal((n, oc)).astype(np.float32)
    dx = x.copy()
    bf16.linear_backward(dy, pw, dx=dx, path=path)
    err = np.abs(dx - (x + dy.astype(np.float64) @ wr))
    bound = (oc + 1) * U * (np.abs(dy.astype(np.float64)) @ np.abs(wr) + np.abs(x))
    assert np.all(err <= bound), f"{path} backward: worst error/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("path", RUNNABLE)
def test_error_against_the_float32_weight_is_the_bf16_rounding(rng, path):
    """Against the unrounded weight the error is bf16's (about 2^-9 relative), not float32's: the kernel
    really does use bf16 weights, and the stated extra u_bf term covers it."""
    x = rng.standard_normal((16, 256)).astype(np.float32)
    w = rng.standard_normal((32, 256)).astype(np.float32)
    y = bf16.linear_forward(x, bf16.PackedWeight(w), path=path)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    rel = np.abs(y - exact) / scale
    assert rel.max() <= U_BF + 258 * U + (U_BF if path == "avx512bf16" else 0.0)
    assert rel.max() > 100 * U  # far above float32 accumulation error


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    script = r"""
import sys
import numpy as np
from peftc import bf16
rng = np.random.default_rng(1)
res = {}
for path in bf16.cpu_paths():
    for n, ic, oc in ((700, 200, 300), (20, 1536, 384)):  # split by rows, then by columns
        x, w = rng.standard_normal((n, ic), dtype=np.float32), rng.standard_normal((oc, ic), dtype=np.float32)
        pw = bf16.PackedWeight(w)
        res[f"y{path}{n}"] = bf16.linear_forward(x, pw, path=path)
        dx = np.ones_like(x)
        bf16.linear_backward(res[f"y{path}{n}"], pw, dx=dx, path=path)
        res[f"dx{path}{n}"] = dx
np.savez(sys.argv[1], **res)
"""
    one = run_with_threads(1, tmp_path / "one.npz", script)
    two = run_with_threads(2, tmp_path / "two.npz", script)
    assert one.keys() == two.keys()
    for name in one:
        assert np.array_equal(one[name], two[name]), f"{name} differs between 1 and 2 threads"


def test_python_threads_get_identical_results(rng):
    x = rng.standard_normal((64, 96)).astype(np.float32)
    pw = bf16.PackedWeight(rng.standard_normal((48, 96)).astype(np.float32))
    want = bf16.linear_forward(x, pw)
    got = [None] * 4

    def run(i):
        for _ in range(20):
            got[i] = bf16.linear_forward(x, pw)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(g, want) for g in got)


# -- path choice -------------------------------------------------------------------------------------------

def test_cpu_paths_lists_what_runs_fastest_first():
    assert RUNNABLE[-1] == "generic" and set(RUNNABLE) <= set(bf16.PATHS)
    assert RUNNABLE == sorted(RUNNABLE, key=bf16.PATHS.index, reverse=True)


def test_environment_forces_a_path(monkeypatch):
    monkeypatch.setenv(bf16.ENV_PATH, "generic")
    assert bf16.selected_path() == "generic"
    monkeypatch.delenv(bf16.ENV_PATH)
    assert bf16.selected_path() == RUNNABLE[0]
    monkeypatch.setenv(bf16.ENV_PATH, "sse9")
    with pytest.raises(ValueError, match="sse9"):
        bf16.selected_path()


@pytest.mark.skipif(RUNNABLE == list(reversed(bf16.PATHS)), reason="this CPU runs every path")
def test_forcing_a_path_the_cpu_lacks_raises_instead_of_crashing(monkeypatch, rng):
    missing = next(p for p in reversed(bf16.PATHS) if p not in RUNNABLE)
    x, w = rng.standard_normal((4, 8)).astype(np.float32), bf16.PackedWeight(np.ones((3, 8), np.float32))
    monkeypatch.setenv(bf16.ENV_PATH, missing)
    with pytest.raises(RuntimeError, match=f"{missing}.*cannot run"):
        bf16.linear_forward(x, w)
    monkeypatch.delenv(bf16.ENV_PATH)
    # the extension's own check, for a caller that passes the number directly
    with pytest.raises(RuntimeError, match=f"bf16 path '{missing}' needs instructions"):
        _C.bf16_linear_forward(np.empty((4, 3), np.float32), None, x, w.packed, None, False,
                               bf16.PATHS.index(missing))
    with pytest.raises(RuntimeError, match="needs instructions"):
        _C.bf16_linear_backward(np.zeros((4, 8), np.float32), np.ones((4, 3), np.float32), w.packed,
                                bf16.PATHS.index(missing))
    if missing == "avx512bf16":
        with pytest.raises(RuntimeError, match="'avx512bf16' needs instructions"):
            _C.bf16_dot_peak(10, 1)


@pytest.mark.skipif("avx512bf16" not in RUNNABLE, reason="the vdpbf16ps loop needs AVX512-BF16")
def test_the_peak_loop_counts_its_flops():
    flops, checksum = _C.bf16_dot_peak(100, 2)
    assert flops == 2 * 100 * 16 * 64
    # each lane adds 2 * 2^-24 per iteration: 16 chains x 16 lanes x 100 iterations, on each of 2 threads
    assert checksum == pytest.approx(2 * 16 * 16 * 100 * 2 * 2.0 ** -24, rel=1e-3)


# -- bad input ----------------------------------------------------------------------------------------------

def test_bad_input_raises_naming_arguments_and_shapes(rng):
    x = rng.standard_normal((4, 30)).astype(np.float32)
    pw = bf16.PackedWeight(rng.standard_normal((5, 30)).astype(np.float32))
    with pytest.raises(TypeError, match="'x' must be float32.*float64"):
        bf16.linear_forward(x.astype(np.float64), pw)
    with pytest.raises(ValueError, match=r"'x' has shape \(4, 31\).*packed weight has shape \(5, 30\)"):
        bf16.linear_forward(rng.standard_normal((4, 31)).astype(np.float32), pw)  # same KP = 32: caught here
    with pytest.raises(ValueError, match=r"'packed_weight' has rows of KP = 32.*'x' has IC = 40.*KP = 64"):
        _C.bf16_linear_forward(np.empty((4, 5), np.float32), None, np.ones((4, 40), np.float32), pw.packed, None,
                               False, 0)
    with pytest.raises(ValueError, match=r"'bias' has shape \(4,\), so OC = 4, but 'y' gave OC = 5"):
        bf16.linear_forward(x, pw, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="'packed_weight' must be uint16"):
        _C.bf16_linear_forward(np.empty((4, 5), np.float32), None, x, pw.packed.astype(np.int32), None, False, 0)
    with pytest.raises(ValueError, match=r"'packed_weight' has shape \(5, 32\), so OC = 5, but 'dy' gave OC = 6"):
        bf16.linear_backward(np.ones((4, 6), np.float32), pw, dx=np.zeros((4, 30), np.float32))
    ro = np.zeros((4, 30), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="'dx' is read-only"):
        bf16.linear_backward(np.ones((4, 5), np.float32), pw, dx=ro)
    a = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="'out' overlaps argument 'x'"):
        _C.bf16_round(a.view(np.uint16)[:4], a[1:5])
    with pytest.raises(ValueError, match="path must be one of"):
        bf16.linear_forward(x, pw, path="neon")
    with pytest.raises(ValueError, match="2-D"):
        bf16.PackedWeight(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="no float32 array"):
        pw.data  # noqa: B018
    assert x.dtype == np.float32 and pw.packed.shape == (5, 32)  # inputs unchanged


def test_workspace_is_checked_for_the_bf16_dot_product_path():
    assert _C.bf16_linear_workspace_size(10, 70, bf16.PATHS.index("avx512bf16")) == 10 * 96 // 2
    assert _C.bf16_linear_workspace_size(10, 70, 0) == 0
