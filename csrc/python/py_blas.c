/* py_blas.c: Python entry points for the BLAS settings of blas.h: the thread count peftc's OpenBLAS
 * (and so peftc's own kernels) run on, how peftc_sgemm threads a product of a given size, and its
 * GEMM accounting. No kernels here. */
#include "args.h"
#include "../blas.h"

#include <limits.h>

static PyObject *py_blas_get_threads(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromLongLong((long long)peftc_blas_threads());
}

static PyObject *py_blas_set_threads(PyObject *self, PyObject *args)
{
    (void)self;
    long long n;
    if (!PyArg_ParseTuple(args, "L", &n))
        return NULL;
    if (n < 1 || n > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "blas_set_threads: 'n' must be in [1, %d], got %lld", INT_MAX, n);
        return NULL;
    }
    const peftc_status st = peftc_blas_set_threads((int64_t)n);
    if (st != PEFTC_OK)
        return arg_status_error("blas_set_threads", st);
    Py_RETURN_NONE;
}

static PyObject *py_sgemm_threads(PyObject *self, PyObject *args)
{
    (void)self;
    long long M, N, K;
    if (!PyArg_ParseTuple(args, "LLL", &M, &N, &K))
        return NULL;
    if (!peftc_blas_sizes_ok(M, N, K)) {
        PyErr_Format(PyExc_ValueError, "sgemm_threads: sizes (M, N, K) = (%lld, %lld, %lld) must be in [0, %d]", M, N,
                     K, INT_MAX);
        return NULL;
    }
    return PyLong_FromLongLong((long long)peftc_sgemm_threads(M, N, K));
}

static PyObject *py_sgemm_single_thread_count(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromLongLong((long long)peftc_sgemm_single_thread_count());
}

static PyObject *py_sgemm_profile(PyObject *self, PyObject *args)
{
    (void)self;
    int on;
    if (!PyArg_ParseTuple(args, "p", &on))
        return NULL;
    peftc_sgemm_profile(on);
    Py_RETURN_NONE;
}

static PyObject *py_sgemm_profile_read(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    int64_t calls, flops, ns;
    peftc_sgemm_profile_read(&calls, &flops, &ns);
    return Py_BuildValue("(LLL)", (long long)calls, (long long)flops, (long long)ns);
}

PyMethodDef peftc_py_blas_methods[] = {
    {"blas_get_threads", py_blas_get_threads, METH_NOARGS, "blas_get_threads() -> int: OpenBLAS's thread count"},
    {"blas_set_threads", py_blas_set_threads, METH_VARARGS, "blas_set_threads(n): OpenBLAS on n >= 1 threads"},
    {"sgemm_threads", py_sgemm_threads, METH_VARARGS,
     "sgemm_threads(M, N, K) -> int: the threads peftc_sgemm runs an (M,N) x K product on"},
    {"sgemm_single_thread_count", py_sgemm_single_thread_count, METH_NOARGS,
     "sgemm_single_thread_count() -> int: products run on one thread by the size rule so far"},
    {"sgemm_profile", py_sgemm_profile, METH_VARARGS,
     "sgemm_profile(on): zero the GEMM totals and start (True) or stop (False) counting"},
    {"sgemm_profile_read", py_sgemm_profile_read, METH_NOARGS,
     "sgemm_profile_read() -> (calls, flops, thread_cpu_ns) of peftc_sgemm since sgemm_profile(True)"},
    {NULL, NULL, 0, NULL},
};
