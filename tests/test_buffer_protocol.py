"""The kernels take any PEP 3118 buffer of the right format in place of an ndarray, in place and with
the ndarray's checks; peftc.functional.Buffer lends C-owned memory the same way.

The kernel calls come from tests/kernel_cases.py, so every kernel is covered.
"""
from __future__ import annotations

import array
import copy
import gc
import pickle
import sys

import numpy as np
import pytest

from peftc import _C
from peftc import functional as F
from peftc.nn import Conv2d

from .kernel_cases import ALIASING_PARAMS, CASE_NAMES, LAYOUT_PARAMS, array_params, make_cases, output_params

CALLS = 1000


def _code(arr: np.ndarray) -> str:
    return {"float32": "f", "int64": "q", "uint16": "H"}[arr.dtype.name]


def _foreign(arr: np.ndarray) -> tuple[object, memoryview]:
    """A copy of arr in memory a Python type owns (array.array when 1-D, else a bytearray) and a
    writeable memoryview of it with arr's format and shape."""
    if arr.ndim == 1:
        backing = array.array(_code(arr), arr.tolist())
        return backing, memoryview(backing)
    backing = bytearray(arr.tobytes())
    return backing, memoryview(backing).cast(_code(arr), arr.shape)


def _to_buffer(arr: np.ndarray) -> F.Buffer:
    buf = F.Buffer(arr.shape, arr.dtype)
    np.asarray(buf)[...] = arr
    return buf


def _assert_same_bits(got, want, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert got.tobytes() == want.tobytes(), f"{what}: bits differ"


def _reference_run(fn: str):
    """The call with ndarrays: (return value, every array after the call)."""
    case = make_cases()[fn]
    result = case.call()
    return case, repr(result), case.arrays()


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_memoryviews_of_the_arrays_give_the_same_bits(fn):
    template, want_result, want = _reference_run(fn)
    case = make_cases()[fn]
    args = list(case.args)
    for name, i in case.names.items():
        args[i] = memoryview(case.args[i])
    assert repr(case.call(args)) == want_result
    for name, arr in case.arrays().items():  # the memoryviews wrote into the arrays behind them
        _assert_same_bits(arr, want[name], f"{fn} '{name}'")


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_outputs_land_in_array_array_and_bytearray_memory(fn):
    template, want_result, want = _reference_run(fn)
    case = make_cases()[fn]
    args, backings = list(case.args), {}
    for name, i in case.names.items():
        backings[name], args[i] = _foreign(case.args[i])
    assert repr(case.call(args)) == want_result
    for name, backing in backings.items():
        got = np.frombuffer(backing, dtype=want[name].dtype).reshape(want[name].shape)
        _assert_same_bits(got, want[name], f"{fn} '{name}'")


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_buffers_give_the_same_bits_and_are_released(fn):
    template, want_result, want = _reference_run(fn)
    case = make_cases()[fn]
    args, bufs = list(case.args), {}
    for name, i in case.names.items():
        bufs[name] = args[i] = _to_buffer(case.args[i])
    assert repr(case.call(args)) == want_result
    for name, buf in bufs.items():
        assert buf.exports == 0, f"{fn}: '{name}' still exported after the call"
        _assert_same_bits(np.asarray(buf), want[name], f"{fn} '{name}'")


# -- the same checks and errors as for ndarrays ------------------------------------------------------

def _raises(case, args, exc, *fragments: str) -> str:
    with pytest.raises(exc) as info:
        case.call(args)
    message = str(info.value)
    assert case.fn in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


BAD_FORMATS = {"float32": ["float64", "int32", ">f4"], "int64": ["int32", "float64", ">i8"],
               "uint16": ["int16", "float32", ">u2"]}


@pytest.mark.parametrize("fn,name", array_params())
@pytest.mark.parametrize("which", range(3))
def test_wrong_format_raises_type_error_naming_argument(fn, name, which):
    case = make_cases()[fn]
    arr = case.arrays()[name]
    bad = memoryview(arr.astype(BAD_FORMATS[arr.dtype.name][which]))
    _raises(case, case.replaced(name, bad), TypeError, f"'{name}'", str(arr.shape), f"'{bad.format}'")


def test_byte_and_long_formats_are_told_apart():
    case = make_cases()["cross_entropy_forward"]
    labels = case.arrays()["labels"]
    as_bytes = memoryview(labels).cast("B")  # right memory, no int64 format
    _raises(case, case.replaced("labels", as_bytes), TypeError, "'labels'", "'B'")
    native_long = array.array("l", labels.tolist())  # "l" is int64 where a long is 8 bytes
    assert native_long.itemsize == 8
    case.call(case.replaced("labels", native_long))


@pytest.mark.parametrize("fn,name,layout", LAYOUT_PARAMS)
def test_non_contiguous_or_misaligned_memoryview_raises_value_error(fn, name, layout):
    case = make_cases()[fn]
    arr = case.arrays()[name]
    if layout == "fortran":
        bad = np.asfortranarray(arr)
    elif layout == "strided":
        base = np.zeros((*arr.shape[:-1], 2 * arr.shape[-1]), dtype=arr.dtype)
        bad = base[..., ::2]
    else:
        raw = np.zeros(arr.nbytes + 1, dtype=np.uint8)
        bad = raw[1:].view(arr.dtype).reshape(arr.shape)
    bad[...] = arr
    view = memoryview(bad)
    assert not view.c_contiguous or layout == "misaligned"
    _raises(case, case.replaced(name, view), ValueError, f"'{name}'", "C-contiguous")


def test_every_other_row_of_a_memoryview_is_not_contiguous():
    """memoryview(arr)[::2] keeps the row length and doubles the row stride; with 3 or more rows
    left the layout check refuses it before any shape is bound."""
    case = make_cases()["dropout_forward"]
    x = np.zeros((10, case.arrays()["x"].shape[1]), np.float32)
    view = memoryview(x)[::2]
    assert view.shape == case.arrays()["x"].shape and view.strides[0] == 2 * x.strides[0]
    _raises(case, case.replaced("x", view), ValueError, "'x'", "C-contiguous")


@pytest.mark.parametrize("fn,name", array_params())
def test_wrong_rank_or_size_memoryview_raises_value_error_naming_shape(fn, name):
    case = make_cases()[fn]
    arr = case.arrays()[name]
    if not (name in case.any_shape and name != "work"):
        bad = arr.reshape(*arr.shape, 1)
        _raises(case, case.replaced(name, memoryview(bad)), ValueError, f"'{name}'", str(bad.shape))
    if name not in case.any_shape:
        axis = -1 if name in case.any_rows else 0
        shape = list(arr.shape)
        shape[axis] += 1
        bad = np.zeros(shape, dtype=arr.dtype)
        message = _raises(case, case.replaced(name, memoryview(bad)), ValueError, f"'{name}'", "shape")
        assert str(shape[axis]) in message, message  # the other argument may be the one named with its shape


@pytest.mark.parametrize("fn,name", output_params())
def test_read_only_memoryview_as_output_raises_value_error(fn, name):
    case = make_cases()[fn]
    arr = case.arrays()[name]
    read_only = memoryview(arr.copy()).toreadonly()
    _raises(case, case.replaced(name, read_only), ValueError, f"'{name}'", "read-only")
    of_bytes = memoryview(arr.tobytes()).cast(_code(arr), arr.shape)
    _raises(case, case.replaced(name, of_bytes), ValueError, f"'{name}'", "read-only")


@pytest.mark.parametrize("fn,name", ALIASING_PARAMS)
def test_output_overlapping_another_memoryview_raises_value_error(fn, name):
    case = make_cases()[fn]
    arrays = case.arrays()
    partners = [other for other in case.names if other != name]
    for other in partners:
        a, b = arrays[name], arrays[other]
        raw = memoryview(bytearray(max(a.nbytes, b.nbytes)))  # one memory seen as each argument
        args = case.replaced(name, raw[: a.nbytes].cast(_code(a), a.shape))
        args[case.names[other]] = raw[: b.nbytes].cast(_code(b), b.shape)
        message = _raises(case, args, ValueError, "overlaps")
        assert f"'{name}'" in message or f"'{other}'" in message, message


def test_memoryview_and_ndarray_of_one_memory_overlap():
    case = make_cases()["relu_forward"]
    x = case.arrays()["x"]
    args = case.replaced("y", memoryview(x))
    args[case.names["x"]] = x
    _raises(case, args, ValueError, "'y'", "'x'", "overlaps")


def test_objects_without_a_buffer_still_raise_type_error():
    case = make_cases()["relu_forward"]
    _raises(case, case.replaced("x", case.arrays()["x"].tolist()), TypeError, "'x'", "list")


# -- every buffer taken is released, once ---------------------------------------------------------

def _bad_variants(case) -> list[tuple[str, memoryview]]:
    """A wrong format, a wrong layout and a read-only output, each as a memoryview."""
    name = next(iter(case.names))
    arr = case.arrays()[name]
    base = np.zeros((*arr.shape, 2), dtype=arr.dtype)
    variants = [(name, memoryview(arr.astype(np.float64))), (name, memoryview(base[..., 0]))]
    out = next(iter(sorted(case.outputs)), None)
    if out is not None:
        variants.append((out, memoryview(case.arrays()[out].copy()).toreadonly()))
    return variants


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_reference_counts_and_exports_are_balanced_over_many_calls(fn):
    case = make_cases()[fn]
    if fn == "scale_inplace":
        case.args[1] = 1.0  # keep values finite over many calls
    views = {name: memoryview(case.args[i]) for name, i in case.names.items()}
    args = list(case.args)
    for name, i in case.names.items():
        args[i] = views[name]
    before = {name: sys.getrefcount(v) for name, v in views.items()}
    for _ in range(CALLS):
        case.call(args)
    assert {name: sys.getrefcount(v) for name, v in views.items()} == before
    for bad_name, bad in _bad_variants(case):
        bad_args = list(args)
        bad_args[case.names[bad_name]] = bad
        held = [a for a in bad_args if isinstance(a, memoryview)]
        counts = [sys.getrefcount(a) for a in held]
        for _ in range(CALLS):
            with pytest.raises((TypeError, ValueError)):
                case.call(bad_args)
        assert [sys.getrefcount(a) for a in held] == counts
        del held
        bad.release()  # refused (BufferError) if a failing call kept an export
    for view in views.values():
        view.release()


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_buffer_exports_are_balanced_over_many_calls(fn):
    case = make_cases()[fn]
    if fn == "scale_inplace":
        case.args[1] = 1.0
    args = list(case.args)
    bufs = []
    for name, i in case.names.items():
        args[i] = _to_buffer(case.args[i])
        bufs.append(args[i])
    counts = [sys.getrefcount(b) for b in bufs]
    for _ in range(CALLS):
        case.call(args)
    # failing: the last array argument has the wrong dtype, after the others were taken
    last = max(case.names.values())
    bad_args = list(args)
    other = np.int64 if case.args[last].dtype == np.float32 else np.float32
    bad_args[last] = F.Buffer(case.args[last].shape, other)
    for _ in range(CALLS):
        with pytest.raises(TypeError):
            case.call(bad_args)
    del bad_args
    assert [b.exports for b in bufs] == [0] * len(bufs)
    assert [sys.getrefcount(b) for b in bufs] == counts


def test_an_exporter_cannot_be_resized_after_a_call():
    case = make_cases()["sumsq"]
    backing = bytearray(case.arrays()["x"].tobytes())
    view = memoryview(backing).cast("f")
    for _ in range(10):
        case.call(case.replaced("x", view))
    view.release()
    backing.extend(b"\0" * 4)  # BufferError if an export were still held


# -- peftc.functional.Buffer ----------------------------------------------------------------------

def test_buffer_is_zero_filled_aligned_and_viewed_in_place():
    buf = F.Buffer((3, 5))
    assert buf.shape == (3, 5) and buf.dtype == np.float32 and buf.nbytes == 60 and not buf.readonly
    a, b = np.asarray(buf), np.asarray(buf)
    assert np.shares_memory(a, b) and a.flags.writeable and a.flags.c_contiguous
    assert a.ctypes.data % 64 == 0 and not a.any()
    assert buf.exports == 2
    a[1, 2] = 7.0
    assert b[1, 2] == 7.0
    del a, b
    assert buf.exports == 0
    ids = F.Buffer(4, dtype="int64")
    assert np.asarray(ids).dtype == np.int64 and ids.nbytes == 32


def test_kernels_write_into_buffer_memory():
    buf = F.Buffer((4, 3))
    view = np.asarray(buf)
    _C.rng_uniform(buf, 0.0, 1.0, 3, 0)
    want = np.empty((4, 3), np.float32)
    _C.rng_uniform(want, 0.0, 1.0, 3, 0)
    _assert_same_bits(view, want, "rng_uniform into a Buffer")
    y = np.empty((4, 3), np.float32)
    _C.relu_forward(y, buf)
    assert np.array_equal(y, np.maximum(want, 0))
    # a Buffer and an array made from it are one memory: the aliasing check sees it
    with pytest.raises(ValueError, match="overlaps"):
        _C.relu_forward(view, buf)


def test_buffer_view_keeps_the_buffer_alive():
    buf = F.Buffer(6)
    a = np.asarray(buf)
    del buf
    gc.collect()
    a[:] = 1.5  # the memory belongs to the Buffer the view still holds
    assert a.sum() == 9.0


def test_resize_and_free_are_refused_while_a_view_is_exported():
    buf = F.Buffer((2, 3))
    a = np.asarray(buf)
    a[...] = np.arange(6).reshape(2, 3)
    with pytest.raises(BufferError, match="resize"):
        buf.resize(12)
    with pytest.raises(BufferError, match="free"):
        buf.free()
    view = memoryview(buf)
    del a
    with pytest.raises(BufferError, match="1 view"):
        buf.free()
    view.release()
    buf.resize((4, 2))  # keeps the leading contents, zero-fills the rest
    assert buf.shape == (4, 2) and buf.nbytes == 32
    assert np.array_equal(np.asarray(buf).ravel(), [0, 1, 2, 3, 4, 5, 0, 0])
    buf.free()
    assert buf.freed and buf.nbytes == 0 and buf.exports == 0


def test_freed_buffer_gives_no_view_and_kernels_refuse_it():
    buf = F.Buffer(6)
    buf.free()
    buf.free()  # a second free is a no-op
    with pytest.raises(BufferError, match="freed"):
        memoryview(buf)
    with pytest.raises(BufferError, match="freed"):
        buf.resize(6)
    case = make_cases()["sumsq"]
    for _ in range(3):
        _raises(case, case.replaced("x", buf), BufferError, "'x'", "freed")
    out_case = make_cases()["fill"]
    _raises(out_case, out_case.replaced("x", buf), BufferError, "'x'", "freed")
    with pytest.raises(BufferError):
        pickle.dumps(buf)
    assert "freed" in repr(buf)


def test_freeze_is_refused_while_a_view_is_exported_and_makes_views_read_only():
    buf = F.Buffer(5)
    a = np.asarray(buf)
    a[:] = 2.0
    with pytest.raises(BufferError, match="freeze"):
        buf.freeze()
    assert not buf.readonly
    del a
    buf.freeze()
    buf.freeze()  # frozen stays frozen
    frozen = np.asarray(buf)
    assert buf.readonly and not frozen.flags.writeable and np.all(frozen == 2.0)
    assert memoryview(buf).readonly
    case = make_cases()["fill"]
    _raises(case, case.replaced("x", buf), ValueError, "'x'", "read-only")
    assert make_cases()["sumsq"].call([buf]) == 20.0  # inputs may be frozen
    with pytest.raises(BufferError, match="resize"):
        buf.resize(3)  # a view is alive (frozen)
    del frozen
    with pytest.raises(BufferError, match="frozen"):
        buf.resize(3)
    assert buf.exports == 0


def test_buffer_copies_and_pickles_with_its_contents():
    buf = F.Buffer((2, 2), "int64")
    np.asarray(buf)[...] = [[1, -2], [3, 2**40]]
    buf.freeze()
    for clone in (copy.deepcopy(buf), pickle.loads(pickle.dumps(buf))):
        assert clone.shape == (2, 2) and clone.dtype == np.int64 and clone.readonly
        assert np.array_equal(np.asarray(clone), np.asarray(buf))
        assert not np.shares_memory(np.asarray(clone), np.asarray(buf))


@pytest.mark.parametrize("shape,dtype,exc", [(-1, "float32", ValueError), ((2, -3), "float32", ValueError),
                                             ("ab", "float32", TypeError), ((2**62, 2**62), "float32", ValueError),
                                             ((1,) * 9, "float32", ValueError), (3, "float64", TypeError),
                                             (3, ">f4", TypeError), (3, "int32", TypeError)])
def test_buffer_rejects_bad_shapes_and_dtypes(shape, dtype, exc):
    with pytest.raises(exc, match="shape|dtype|integer"):
        F.Buffer(shape, dtype)


def test_buffer_readonly_at_construction_and_zero_size():
    frozen = F.Buffer(3, readonly=True)
    assert frozen.readonly and not np.asarray(frozen).flags.writeable
    empty = F.Buffer((0, 4))
    assert np.asarray(empty).shape == (0, 4) and empty.nbytes == 0
    scalar = F.Buffer(())
    assert np.asarray(scalar).shape == () and scalar.nbytes == 4


# -- a module keeps its workspace in a Buffer -----------------------------------------------------

@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 0, 3), (1, 0, 1), ((1, 2), (1, 0), (3, 2))])
def test_conv2d_scratch_in_a_buffer_gives_the_same_bits(stride, padding, kernel):
    rng = np.random.default_rng(4)
    conv = Conv2d(3, 5, kernel, stride=stride, padding=padding)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    y = conv.forward(x)
    assert isinstance(conv._work, F.Buffer) and conv._work.exports == 0
    want = F.conv2d_forward(x, conv.weight.data, conv.bias.data, stride, padding)  # an ndarray workspace
    _assert_same_bits(y, want, "Conv2d forward")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv.backward(dy)
    want_dx = np.zeros_like(x)
    want_dw = np.zeros_like(conv.weight.data)
    want_db = np.zeros_like(conv.bias.data)
    F.conv2d_backward(dy, x, conv.weight.data, stride, padding, dx=want_dx, dweight=want_dw, dbias=want_db)
    _assert_same_bits(dx, want_dx, "Conv2d dx")
    _assert_same_bits(conv.weight.grad, want_dw, "Conv2d dweight")
    _assert_same_bits(conv.bias.grad, want_db, "Conv2d dbias")
    # a smaller input reuses the Buffer; a copied module gets its own
    work = conv._work
    conv.forward(x[:1])
    assert conv._work is work
    clone = copy.deepcopy(conv)
    _assert_same_bits(clone.forward(x), y, "deep-copied Conv2d")
    assert clone._work is not work
