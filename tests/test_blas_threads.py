"""peftc's BLAS thread count (peftc.get_num_threads / set_num_threads) and the size rule of its sgemm entry:
a product under 2^23 flops runs on one thread, with OpenBLAS's own 2-thread result up to float32 rounding, and
the process's thread count comes back afterwards, also when products from several threads overlap."""
from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

import peftc
from peftc import _C
from peftc import functional as F
from peftc.distributed import blas_threads, set_blas_threads
from peftc.openblas import _resolve

SPLIT_MIN_FLOPS = 1 << 23
# the main job's step: 32 glosses padded to T = 20 tokens, hidden 384, LoRA r = 8, 41 classes
ROWS = 32 * 20
SMALL_SHAPES = [(ROWS, 8, 384), (ROWS, 384, 8), (8, 384, ROWS), (32, 41, 384)]
LARGE_SHAPES = [(ROWS, 384, 384), (ROWS, 1536, 384), (384, 384, ROWS)]


def library_threads() -> int:
    """The count OpenBLAS itself holds, read past peftc's wrappers."""
    lib, _, prefix = _resolve()
    get = getattr(lib, prefix + "openblas_get_num_threads")
    get.restype = ctypes.c_int
    return int(get())


def library_sgemm_nt(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x w^T by OpenBLAS's cblas_sgemm called directly, split over however many threads OpenBLAS runs."""
    lib, _, prefix = _resolve()
    sgemm = getattr(lib, prefix + "cblas_sgemm")
    sgemm.restype = None
    M, K = x.shape
    N = w.shape[0]
    y = np.zeros((M, N), np.float32)
    ptr = ctypes.POINTER(ctypes.c_float)
    sgemm(ctypes.c_int(101), ctypes.c_int(111), ctypes.c_int(112), ctypes.c_int(M), ctypes.c_int(N), ctypes.c_int(K),
          ctypes.c_float(1.0), x.ctypes.data_as(ptr), ctypes.c_int(K), w.ctypes.data_as(ptr), ctypes.c_int(K),
          ctypes.c_float(0.0), y.ctypes.data_as(ptr), ctypes.c_int(N))
    return y


@pytest.fixture
def two_threads():
    old = peftc.get_num_threads()
    peftc.set_num_threads(2)
    yield
    peftc.set_num_threads(old)


def test_set_num_threads_sets_the_count_of_peftcs_openblas():
    old = peftc.get_num_threads()
    try:
        peftc.set_num_threads(1)
        assert peftc.get_num_threads() == 1 and library_threads() == 1
        assert peftc.openblas.openblas_info()["num_threads"] == 1
        peftc.set_num_threads(3)
        assert peftc.get_num_threads() == 3 and library_threads() == 3
        assert blas_threads() == 3 and set_blas_threads(2) == 3 and peftc.get_num_threads() == 2
    finally:
        peftc.set_num_threads(old)


@pytest.mark.parametrize("n, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError),
                                      ("2", TypeError)])
def test_set_num_threads_rejects_a_count_below_one_or_not_an_int(n, error):
    old = peftc.get_num_threads()
    with pytest.raises(error, match="n must be"):
        peftc.set_num_threads(n)
    with pytest.raises(ValueError, match="'n' must be in"):
        _C.blas_set_threads(0)
    assert peftc.get_num_threads() == old


def test_products_under_the_flop_threshold_run_on_one_thread(two_threads):
    for M, N, K in SMALL_SHAPES:
        assert 2 * M * N * K < SPLIT_MIN_FLOPS
        assert _C.sgemm_threads(M, N, K) == 1, (M, N, K)
    for M, N, K in LARGE_SHAPES:
        assert _C.sgemm_threads(M, N, K) == 2, (M, N, K)
    # the boundary: 2 M N K = 2^23 splits, one multiply-add fewer per row does not
    assert _C.sgemm_threads(1024, 64, 64) == 2
    assert _C.sgemm_threads(1024, 64, 63) == 1
    with pytest.raises(ValueError, match=r"sgemm_threads: sizes \(M, N, K\) = \(-1, 2, 3\)"):
        _C.sgemm_threads(-1, 2, 3)


def test_a_small_product_takes_the_single_thread_path_and_matches_openblas_on_two_threads(two_threads):
    rng = np.random.default_rng(0)
    for M, N, K in SMALL_SHAPES + LARGE_SHAPES[:1]:
        x = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((N, K)).astype(np.float32)
        before = _C.sgemm_single_thread_count()
        ours = F.linear_forward(x, w)
        small = 2 * M * N * K < SPLIT_MIN_FLOPS
        assert _C.sgemm_single_thread_count() - before == int(small), (M, N, K)
        assert library_threads() == 2, "the thread count was not restored after the product"
        theirs = library_sgemm_nt(x, w)  # OpenBLAS's own split over 2 threads
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.sqrt(K))


def test_overlapping_small_and_large_products_from_several_threads_restore_the_count(two_threads):
    rng = np.random.default_rng(1)
    cases = [(rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((N, K)).astype(np.float32))
             for M, N, K in SMALL_SHAPES + LARGE_SHAPES[:1]]
    expected = [F.linear_forward(x, w) for x, w in cases]
    failures: list[str] = []

    def work(offset: int) -> None:
        for i in range(40):
            j = (i + offset) % len(cases)
            got = F.linear_forward(*cases[j])
            # a large product that overlaps a small one runs on one thread too: rounding differences only
            if not np.allclose(got, expected[j], rtol=1e-5, atol=1e-4):
                failures.append(f"case {j} differs by {np.abs(got - expected[j]).max()}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert peftc.get_num_threads() == 2 and library_threads() == 2


def test_a_count_set_while_small_products_run_holds_afterwards(two_threads):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((ROWS, 384)).astype(np.float32)
    w = rng.standard_normal((8, 384)).astype(np.float32)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            F.linear_forward(x, w)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for n in (3, 1, 2):
            peftc.set_num_threads(n)
            assert peftc.get_num_threads() == n
    finally:
        stop.set()
        worker.join()
    assert peftc.get_num_threads() == 2 and library_threads() == 2


def test_gemm_accounting_counts_the_products_their_flops_and_stops_when_off():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    w = rng.standard_normal((40, 48)).astype(np.float32)
    _C.sgemm_profile(True)
    try:
        for _ in range(3):
            F.linear_forward(x, w)
        F.linear_forward(x[:0], w)  # M = 0: no product, not counted
        calls, flops, ns = _C.sgemm_profile_read()
        assert (calls, flops) == (3, 3 * 2 * 64 * 40 * 48) and ns >= 0
    finally:
        _C.sgemm_profile(False)
    F.linear_forward(x, w)
    assert _C.sgemm_profile_read() == (0, 0, 0)
