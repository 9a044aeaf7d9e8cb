"""Bad input to every function of peftc._C raises the right exception, naming the argument.

The cases come from tests/kernel_cases.py: one valid call per kernel, from which each test swaps a
single argument for a wrong one.
"""
from __future__ import annotations

import numpy as np
import pytest

from peftc import _C

from .kernel_cases import (ALIASING_PARAMS, BLAS_SETTINGS, CASE_NAMES, LAYOUT_PARAMS, RANKED_PARAMS, SIZE_QUERIES, SIZED_PARAMS,
                           array_params, make_cases, output_params)


def _raises(case, args, exc, *fragments: str):
    with pytest.raises(exc) as info:
        case.call(args)
    message = str(info.value)
    assert case.fn in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_every_extension_function_has_a_boundary_case():
    exported = {name for name in dir(_C) if not name.startswith("_") and callable(getattr(_C, name))
                and not isinstance(getattr(_C, name), type)}  # Buffer is a type, not a kernel
    assert exported - SIZE_QUERIES - BLAS_SETTINGS == set(CASE_NAMES)


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_valid_call_succeeds(fn):
    make_cases()[fn].call()


_CASES = make_cases()


def test_left_out_cases_are_exactly_the_inapplicable_ones():
    arrays = array_params()
    assert {p for p in arrays if p not in SIZED_PARAMS} == {(f, n) for f, n in arrays if n in _CASES[f].any_shape}
    assert all(_CASES[f].arrays()[n].ndim == 1 for f, n in arrays if (f, n, "fortran") not in LAYOUT_PARAMS)
    assert all(len(_CASES[f].names) == 1 for f, n in output_params() if (f, n) not in ALIASING_PARAMS)
    assert len(SIZED_PARAMS) < len(RANKED_PARAMS) < len(arrays) and ALIASING_PARAMS


BAD_DTYPES = {"float32": ["float64", "int32", ">f4", "float16"], "int64": ["int32", "float64", ">i8", "float32"],
              "uint16": ["int16", "float32", ">u2", "float16"]}


@pytest.mark.parametrize("fn,name", array_params())
@pytest.mark.parametrize("which", range(4))
def test_wrong_dtype_raises_type_error_naming_argument(fn, name, which):
    case = make_cases()[fn]
    arr = case.arrays()[name]
    bad = arr.astype(BAD_DTYPES[arr.dtype.name][which])
    _raises(case, case.replaced(name, bad), TypeError, f"'{name}'", str(bad.shape))


@pytest.mark.parametrize("fn,name", array_params())
def test_non_array_raises_type_error_naming_argument(fn, name):
    case = make_cases()[fn]
    bad = None if name not in case.optional else case.arrays()[name].tolist()
    _raises(case, case.replaced(name, bad), TypeError, f"'{name}'")


@pytest.mark.parametrize("fn,name", SIZED_PARAMS)
def test_mismatched_size_raises_value_error_naming_argument_and_shape(fn, name):
    case = make_cases()[fn]
    arr = case.arrays()[name]
    axis = -1 if name in case.any_rows else 0  # a lookup table may have any number of rows
    shape = list(arr.shape)
    shape[axis] += 1
    bad = np.zeros(shape, dtype=arr.dtype)
    message = _raises(case, case.replaced(name, bad), ValueError, f"'{name}'", "shape")
    assert str(shape[axis]) in message, message


@pytest.mark.parametrize("fn,name", RANKED_PARAMS)
def test_wrong_rank_raises_value_error_naming_argument_and_shape(fn, name):
    case = make_cases()[fn]
    arr = case.arrays()[name]
    bad = arr.reshape(*arr.shape, 1)
    _raises(case, case.replaced(name, bad), ValueError, f"'{name}'", str(bad.shape))


def _strided(arr: np.ndarray) -> np.ndarray:
    base = np.zeros((*arr.shape[:-1], 2 * arr.shape[-1]), dtype=arr.dtype)
    view = base[..., ::2]
    view[...] = arr
    return view


def _misaligned(arr: np.ndarray) -> np.ndarray:
    buf = np.zeros(arr.nbytes + 1, dtype=np.uint8)
    view = buf[1:].view(arr.dtype).reshape(arr.shape)
    view[...] = arr
    return view


@pytest.mark.parametrize("fn,name,layout", LAYOUT_PARAMS)
def test_non_contiguous_or_misaligned_raises_value_error(fn, name, layout):
    case = make_cases()[fn]
    arr = case.arrays()[name]
    if layout == "fortran":
        bad = np.asfortranarray(arr)
    else:
        bad = _strided(arr) if layout == "strided" else _misaligned(arr)
    assert not (bad.flags.c_contiguous and bad.flags.aligned)
    _raises(case, case.replaced(name, bad), ValueError, f"'{name}'", "C-contiguous")


@pytest.mark.parametrize("fn,name", output_params())
def test_read_only_output_raises_value_error(fn, name):
    case = make_cases()[fn]
    bad = case.arrays()[name].copy()
    bad.flags.writeable = False
    _raises(case, case.replaced(name, bad), ValueError, f"'{name}'", "read-only")


@pytest.mark.parametrize("fn,name", ALIASING_PARAMS)
def test_output_aliasing_another_argument_raises_value_error(fn, name):
    case = make_cases()[fn]
    arrays = case.arrays()
    partners = [other for other in case.names if other != name]
    for other in partners:
        a, b = arrays[name], arrays[other]
        buf = np.zeros(max(a.nbytes, b.nbytes), dtype=np.uint8)  # one buffer seen as each argument's dtype
        args = case.replaced(name, buf[: a.nbytes].view(a.dtype).reshape(a.shape))
        args[case.names[other]] = buf[: b.nbytes].view(b.dtype).reshape(b.shape)
        message = _raises(case, args, ValueError, "overlaps")
        assert f"'{name}'" in message or f"'{other}'" in message, message


def test_partially_overlapping_views_are_detected():
    case = make_cases()["dropout_forward"]
    buf = np.zeros(30, dtype=np.float32)
    args = case.replaced("out", buf[:20].reshape(5, 4))
    args[case.names["x"]] = buf[10:30].reshape(5, 4)
    _raises(case, args, ValueError, "'out'", "'x'", "overlaps")


def test_disjoint_views_of_one_buffer_are_accepted():
    case = make_cases()["dropout_forward"]
    buf = np.ones(40, dtype=np.float32)
    args = case.replaced("out", buf[:20].reshape(5, 4))
    args[case.names["x"]] = buf[20:].reshape(5, 4)
    case.call(args)


BAD_SCALARS = [
    # (function, argument position after the arrays, value, fragment the message must hold)
    ("dropout_forward", "p", 1.0, "'p'"),
    ("dropout_forward", "p", -0.1, "'p'"),
    ("dropout_forward", "p", float("nan"), "'p'"),
    ("dropout_backward", "p", 1.5, "'p'"),
    ("dropout_backward", "p", float("nan"), "'p'"),
    ("lora_forward", "p", 1.0, "'dropout'"),
    ("lora_forward", "p", float("nan"), "'dropout'"),
    ("lora_backward", "p", -0.5, "'dropout'"),
    ("lora_merge", "sign", 2.0, "'sign'"),
    ("rng_normal", "std", -1.0, "'std'"),
    ("rng_normal", "std", float("nan"), "'std'"),
    ("rng_uniform", "high", -3.0, "low <= high"),
    ("adamw_step", "step", 0, "step"),
    ("adamw_step", "beta1", 1.0, "betas"),
    ("adamw_step", "beta2", -0.1, "betas"),
    ("adamw_step", "eps", -1e-8, "eps"),
    ("sgd_step", "step", 0, "step"),
    ("sgd_step", "dampening", 0.5, "nesterov"),
    ("conv2d_forward", "SH", 0, "stride > 0"),
    ("conv2d_forward", "PW", -1, "padding >= 0"),
    ("conv2d_forward", "PH", 2**62, "padding"),
    ("conv2d_backward", "SW", -2, "stride > 0"),
    ("maxpool2d_forward", "PW", 2, "padding <= kernel / 2"),
    ("maxpool2d_forward", "KH", 0, "kernel > 0"),
    ("avgpool2d_forward", "PH", 2**62, "padding"),
    ("avgpool2d_backward", "KW", 9, "smaller than the kernel"),
    ("batchnorm2d_forward", "eps", 0.0, "eps > 0"),
    ("batchnorm2d_forward", "momentum", 1.5, "momentum"),
    ("batchnorm2d_forward", "momentum", float("nan"), "momentum"),
    ("layernorm_forward", "eps", -1.0, "eps >= 0"),
    ("l2_normalize_forward", "eps", 0.0, "'eps'"),
    ("l2_normalize_backward", "eps", float("nan"), "'eps'"),
    ("attention_forward", "p", 1.0, "'dropout'"),
    ("attention_forward", "num_heads", 3, "num_heads"),
    ("attention_forward", "num_heads", 0, "num_heads"),
    ("attention_backward", "p", float("nan"), "'dropout'"),
    ("attention_backward", "num_heads", -2, "num_heads"),
]
SCALAR_POSITION = {
    "dropout_forward": {"p": 2}, "dropout_backward": {"p": 2}, "lora_forward": {"p": 10},
    "lora_backward": {"p": 12}, "lora_merge": {"sign": 6}, "rng_normal": {"std": 2}, "rng_uniform": {"high": 2},
    "adamw_step": {"beta1": 5, "beta2": 6, "eps": 7, "step": 9}, "sgd_step": {"dampening": 5, "step": 8},
    "conv2d_forward": {"SH": 5, "PH": 7, "PW": 8}, "conv2d_backward": {"SW": 8},
    "maxpool2d_forward": {"KH": 3, "PW": 8}, "avgpool2d_forward": {"PH": 6}, "avgpool2d_backward": {"KW": 3},
    "batchnorm2d_forward": {"momentum": 9, "eps": 10}, "layernorm_forward": {"eps": 6},
    "l2_normalize_forward": {"eps": 3}, "l2_normalize_backward": {"eps": 4},
    "attention_forward": {"p": 8, "num_heads": 11}, "attention_backward": {"p": 9, "num_heads": 12},
}


@pytest.mark.parametrize("fn,arg,value,fragment", BAD_SCALARS)
def test_scalar_outside_its_domain_raises_value_error(fn, arg, value, fragment):
    case = make_cases()[fn]
    args = case.copy().args
    args[SCALAR_POSITION[fn][arg]] = value
    _raises(case, args, ValueError, fragment)


def test_sgd_momentum_without_buffer_raises_value_error():
    case = make_cases()["sgd_step"]
    _raises(case, case.replaced("momentum_buffer", None), ValueError, "momentum_buffer")


def test_lora_forward_rejects_xd_when_dropout_is_zero():
    case = make_cases()["lora_forward"]
    args = case.copy().args
    args[10] = 0.0
    _raises(case, args, ValueError, "'xd'")


def test_lora_forward_requires_xd_when_dropout_is_positive():
    case = make_cases()["lora_forward"]
    _raises(case, case.replaced("xd", None), TypeError, "'xd'")


def test_lora_backward_rejects_too_small_workspace():
    case = make_cases()["lora_backward"]
    work = case.arrays()["work"]
    _raises(case, case.replaced("work", work[:-1].copy()), ValueError, "'work'", str(work.size))


@pytest.mark.parametrize("fn", ["conv2d_forward", "conv2d_backward", "attention_forward", "attention_backward"])
def test_too_small_or_missing_workspace_raises_value_error(fn):
    case = make_cases()[fn]
    work = case.arrays()["work"]
    _raises(case, case.replaced("work", work[:-1].copy()), ValueError, "'work'", str(work.size))
    if "work" in case.optional:
        _raises(case, case.replaced("work", None), ValueError, "'work' is None", str(work.size))


def test_lora_merge_rejects_lora_bias_without_base_bias():
    case = make_cases()["lora_merge"]
    _raises(case, case.replaced("bias", None), ValueError, "'lora_bias'", "'bias'")


def test_linear_backward_needs_x_for_dweight():
    case = make_cases()["linear_backward"]
    _raises(case, case.replaced("x", None), TypeError, "'x'")


def test_linear_backward_bias_gradient_alone_needs_no_x():
    case = make_cases()["linear_backward"]
    args = case.copy().args
    args[0] = args[1] = args[4] = None
    db0 = args[2].copy()
    case.call(args)
    np.testing.assert_allclose(args[2], db0 + args[3].sum(axis=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", ["cross_entropy_forward", "cross_entropy_backward"])
@pytest.mark.parametrize("label", [-1, 4, 10**12, -101])
def test_label_out_of_range_raises_value_error(fn, label):
    case = make_cases()[fn]
    labels = case.arrays()["labels"].copy()
    labels[1] = label
    _raises(case, case.replaced("labels", labels), ValueError, "'labels'")


def test_labels_equal_to_a_custom_ignore_index_are_accepted():
    case = make_cases()["cross_entropy_forward"]
    labels = case.arrays()["labels"].copy()
    labels[2] = 17
    args = case.replaced("labels", labels)
    args[-1] = 17
    loss, count = case.call(args)
    assert count == 4 and np.isfinite(loss)


@pytest.mark.parametrize("sizes", [(-1, 4, 2), (5, -4, 2), (5, 4, -2)])
def test_workspace_size_rejects_negative_sizes(sizes):
    with pytest.raises(ValueError, match="lora_backward_workspace_size"):
        _C.lora_backward_workspace_size(*sizes, 0.0)


@pytest.mark.parametrize("fn,sizes", [("conv2d_workspace_size", (2, 3, 5, 6, -4, 3, 2, 1, 2, 1, 0)),
                                      ("conv2d_workspace_size", (2, 3, 5, 6, 4, 3, 2, 0, 2, 1, 0)),
                                      ("conv2d_workspace_size", (2, 3, 5, 6, 4, 9, 2, 1, 2, 1, 0)),
                                      ("conv2d_workspace_size", (1, 2**40, 2**20, 2**20, 8, 2**20, 1, 1, 1, 0, 0)),
                                      ("conv2d_workspace_size", (1, 2**31, 2**30, 2**30, 2**31, 3, 3, 1, 1, 1, 1)),
                                      ("attention_forward_workspace_size", (-1, 0.1)),
                                      ("attention_forward_workspace_size", (2**32, 0.1)),
                                      ("attention_backward_workspace_size", (2**40, 0.0))])
def test_size_queries_reject_negative_or_overflowing_sizes(fn, sizes):
    with pytest.raises(ValueError, match=fn):
        getattr(_C, fn)(*sizes)


def test_workspace_size_counts_dropout_scratch():
    assert _C.lora_backward_workspace_size(5, 4, 2, 0.0) == 10
    assert _C.lora_backward_workspace_size(5, 4, 2, 0.1) == 30


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_wrong_argument_count_raises_type_error(fn):
    case = make_cases()[fn]
    with pytest.raises(TypeError):
        case.call(case.args[:-1])


def test_lora_workspace_size_refuses_overflowing_sizes():
    with pytest.raises(ValueError, match="overflows"):
        _C.lora_backward_workspace_size(2**40, 2**40, 2**40, 0.1)
    assert _C.lora_backward_workspace_size(4, 3, 2, 0.1) == 4 * 2 + 4 * 3
