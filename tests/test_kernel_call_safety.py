"""Calls into peftc._C leave inputs alone, leak no references, are thread-safe, and (through
peftc.functional) write into the caller's arrays without copying."""
from __future__ import annotations

import gc
import sys
import threading
import tracemalloc

import numpy as np
import pytest

from peftc import functional as F

from .kernel_cases import CASE_NAMES, make_cases

CALLS = 1000
LEAK_CALLS = 300  # tracemalloc slows calls down; 300 x one leaked tuple is still > 20 kB


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_inputs_are_unchanged_by_a_call(fn):
    case = make_cases()[fn]
    inputs = {name: arr.copy() for name, arr in case.arrays().items() if name not in case.outputs}
    case.call()
    for name, before in inputs.items():
        assert np.array_equal(case.arrays()[name], before), f"{fn} changed its input '{name}'"


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_reference_counts_are_stable_over_many_calls(fn):
    case = make_cases()[fn]
    if fn == "scale_inplace":
        case.args[1] = 1.0  # keep values finite over many calls
    arrays = list(case.arrays().values())
    before = [sys.getrefcount(a) for a in arrays]
    for _ in range(CALLS):
        case.call()
    assert [sys.getrefcount(a) for a in arrays] == before


def _bad_variants(case) -> list[tuple[str, np.ndarray]]:
    """A wrong dtype, a wrong layout and (where shapes are constrained) a wrong shape for one array."""
    free = case.any_shape | case.any_rows
    name = next(n for n in case.names if n not in free) if len(case.names) > 1 else next(iter(case.names))
    arr = case.arrays()[name]
    strided = np.zeros((*arr.shape, 2), dtype=arr.dtype)[..., 0]
    variants = [(name, arr.astype(np.float64)), (name, strided)]
    if name not in case.any_shape:
        variants.append((name, np.zeros((*arr.shape, 2), dtype=arr.dtype)))
        variants.append((name, np.zeros((arr.shape[0] + 1, *arr.shape[1:]), dtype=arr.dtype)))
    return variants


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_reference_counts_are_stable_over_many_failing_calls(fn):
    case = make_cases()[fn]
    for name, bad in _bad_variants(case):
        args = case.replaced(name, bad)
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        before = [sys.getrefcount(a) for a in arrays]
        for _ in range(CALLS):
            with pytest.raises((TypeError, ValueError)):
                case.call(args)
        assert [sys.getrefcount(a) for a in arrays] == before


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_failing_calls_do_not_leak_memory(fn):
    case = make_cases()[fn]
    variants = [case.replaced(name, bad) for name, bad in _bad_variants(case)]

    def fail_many(times: int) -> None:
        for _ in range(times):
            for args in variants:
                try:
                    case.call(args)
                except (TypeError, ValueError):
                    pass

    fail_many(50)  # warm caches (interned strings, exception machinery)
    gc.collect()
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    fail_many(LEAK_CALLS)
    gc.collect()
    end, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert end - start < 16_000, f"{fn}: {end - start} bytes still allocated after {LEAK_CALLS} rounds of failing calls"


def _run(case, template) -> tuple:
    """Reset the outputs from the template, call, and return (result, outputs)."""
    for name in case.outputs:
        np.copyto(case.arrays()[name], template.arrays()[name])
    result = case.call()
    return result, {name: case.arrays()[name].copy() for name in case.outputs}


def _assert_same(got: tuple, want: tuple, fn: str) -> None:
    assert got[0] == want[0], f"{fn}: returned {got[0]} in a thread, {want[0]} alone"
    for name in want[1]:
        assert np.array_equal(got[1][name], want[1][name]), f"{fn}: '{name}' differs between threads"


@pytest.mark.parametrize("fn", CASE_NAMES)
def test_concurrent_calls_match_a_single_threaded_call(fn):
    template = make_cases(seed=3)[fn]
    want = _run(template.copy(), template)
    results: list[list[tuple]] = [[], []]
    barrier = threading.Barrier(2)

    def worker(slot: int) -> None:
        # outputs private to the thread, inputs shared between both threads
        mine = template.copy()
        for name, i in template.names.items():
            if name not in template.outputs:
                mine.args[i] = template.args[i]
        barrier.wait()
        for _ in range(50):
            results[slot].append(_run(mine, template))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results[0]) == len(results[1]) == 50
    for got in results[0] + results[1]:
        _assert_same(got, want, fn)


def test_concurrent_large_gemms_match_a_single_threaded_call():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 192)).astype(np.float32)
    w = rng.standard_normal((160, 192)).astype(np.float32)
    want = F.linear_forward(x, w)
    outs = [[], []]

    def worker(slot: int) -> None:
        for _ in range(20):
            outs[slot].append(F.linear_forward(x, w))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for y in outs[0] + outs[1]:
        assert np.array_equal(y, want)


@pytest.mark.parametrize("fn,name", [("linear_forward", "y"), ("lora_forward", "y"), ("lora_forward", "u"),
                                     ("lora_forward", "xd"), ("rng_uniform", "out"), ("rng_normal", "out"),
                                     ("dropout_forward", "out"), ("cross_entropy_forward", "probs"),
                                     ("conv2d_forward", "y"), ("conv2d_forward", "work"), ("conv2d_backward", "work"),
                                     ("batchnorm2d_forward", "y"), ("batchnorm2d_forward", "mean"),
                                     ("batchnorm2d_forward", "rstd"), ("maxpool2d_forward", "y"),
                                     ("maxpool2d_forward", "argmax"), ("avgpool2d_forward", "y"),
                                     ("global_avgpool2d_forward", "y"), ("relu_forward", "y"),
                                     ("embedding_forward", "out"), ("layernorm_forward", "out"),
                                     ("layernorm_forward", "mean"), ("layernorm_forward", "rstd"),
                                     ("gelu_forward", "out"), ("attention_forward", "out"), ("attention_forward", "att"),
                                     ("attention_forward", "work"), ("attention_backward", "work"),
                                     ("mean_pool_forward", "out"), ("l2_normalize_forward", "out"),
                                     ("l2_normalize_forward", "norm")])
def test_overwritten_outputs_ignore_their_previous_contents(fn, name):
    """Outputs marked overwritten, and scratch, may hold anything before the call."""
    case = make_cases()[fn]
    first = _run(case.copy(), case)[1]
    poisoned = case.copy()
    target = poisoned.arrays()[name]
    target.fill(np.nan if target.dtype == np.float32 else -1)
    poisoned.call()
    outputs = sorted(case.outputs - {"work"}) if name == "work" else [name]  # scratch: what it feeds
    for out in outputs:
        assert np.array_equal(poisoned.arrays()[out], first[out]), f"{fn}: '{out}' depends on '{name}'"


# -- zero-copy through peftc.functional ------------------------------------------------------------

def test_functional_forwards_write_into_the_given_arrays():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    a = rng.standard_normal((2, 4)).astype(np.float32)
    bm = rng.standard_normal((3, 2)).astype(np.float32)
    y = np.empty((5, 3), np.float32)
    assert np.shares_memory(F.linear_forward(x, w, out=y), y)

    xd, u, y2 = np.empty_like(x), np.empty((5, 2), np.float32), np.empty((5, 3), np.float32)
    got = F.lora_forward(x, w, None, a, bm, None, 0.5, 0.2, 1, 0, out=y2, xd=xd, u=u)
    assert all(np.shares_memory(r, o) for r, o in zip(got, (y2, xd, u)))

    out = np.empty_like(x)
    assert np.shares_memory(F.dropout_forward(x, 0.3, 2, 0, out=out), out)
    assert np.shares_memory(F.rng_uniform(x.shape, 0.0, 1.0, 3, out=out), out)
    assert np.shares_memory(F.rng_normal(x.shape, 0.0, 1.0, 3, out=out), out)

    probs = np.empty_like(x)
    _, _, p = F.cross_entropy_forward(x, np.array([0, 1, 2, 3, -100]), probs=probs)
    assert np.shares_memory(p, probs)


def test_functional_in_place_updates_keep_the_callers_arrays():
    rng = np.random.default_rng(2)
    param, grad = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    m, v, buf = np.zeros_like(param), np.zeros_like(param), np.zeros_like(param)
    ptrs = [a.ctypes.data for a in (param, m, v, buf)]
    p0 = param.copy()
    F.adamw_step(param, m, v, grad, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1)
    F.sgd_step(param, buf, grad, 1e-2, 0.9)
    F.scale_(param, 0.5)
    assert [a.ctypes.data for a in (param, m, v, buf)] == ptrs
    assert not np.array_equal(param, p0) and np.any(m != 0) and np.any(v != 0) and np.any(buf != 0)


def test_functional_layer_passes_wrong_dtype_through_as_type_error():
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match="'x'"):
        F.linear_forward(x, np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="'labels'"):
        F.cross_entropy_forward(np.ones((2, 3), np.float32), np.array([0, 1], dtype=np.int32))
