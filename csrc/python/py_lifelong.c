/* py_lifelong.c: wrappers of the lifelong data-selection kernels (lifelong.c), the last section of
 * peftc.h: per-example LoRA gradients and the k-means assignment and update. Parse, validate, release the
 * GIL, call, map the status; no math here. */
#include "args.h"

static PyObject *py_lora_per_example_grad(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_da, *o_dbm, *o_work, *o_x, *o_dy, *o_a, *o_bm, *o_off;
    float scale;
    if (!PyArg_ParseTuple(args, "OOOOOOOOf:lora_per_example_grad", &o_da, &o_dbm, &o_work, &o_x, &o_dy, &o_a, &o_bm,
                          &o_off, &scale))
        return NULL;
    ARG_CHECK(ck, "lora_per_example_grad");
    float *da, *dbm, *work, *x, *dy, *a, *bm;
    int64_t *off;
    if (arg_f32(&ck, "dlora_A", o_da, "E R IC", ARG_OUT, &da) < 0 ||
        arg_f32(&ck, "dlora_B", o_dbm, "E OC R", ARG_OUT, &dbm) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 || arg_f32(&ck, "lora_A", o_a, "R IC", ARG_IN, &a) < 0 ||
        arg_f32(&ck, "lora_B", o_bm, "OC R", ARG_IN, &bm) < 0 ||
        arg_i64(&ck, "offsets", o_off, "S", ARG_IN, &off) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC"), R = arg_dim(&ck, "R"),
                  E = arg_dim(&ck, "E");
    if (arg_dim(&ck, "S") != E + 1) {
        PyErr_Format(PyExc_ValueError,
                     "lora_per_example_grad: 'offsets' has shape (%lld,), needs (E + 1,) = (%lld,): 'dlora_A' has "
                     "shape (E, R, IC) = (%lld, %lld, %lld)",
                     (long long)arg_dim(&ck, "S"), (long long)(E + 1), (long long)E, (long long)R, (long long)IC);
        return NULL;
    }
    if (arg_workspace(&ck, peftc_lora_per_example_grad_workspace_size(N, R)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_lora_per_example_grad(da, dbm, work, x, dy, a, bm, off, scale, N, IC, OC, R, E);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *workspace_size(PyObject *args, const char *fmt, const char *fn, int64_t (*size)(int64_t, int64_t))
{
    long long m, n;
    if (!PyArg_ParseTuple(args, fmt, &m, &n))
        return NULL;
    if (m < 0 || n < 0) {
        PyErr_Format(PyExc_ValueError, "%s: sizes must be >= 0, got %lld and %lld", fn, m, n);
        return NULL;
    }
    if (n > 0 && m > (INT64_MAX - n) / (2 * n)) {
        PyErr_Format(PyExc_ValueError, "%s: sizes %lld and %lld overflow int64", fn, m, n);
        return NULL;
    }
    return PyLong_FromLongLong((long long)size(m, n));
}

static PyObject *py_lora_per_example_grad_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    return workspace_size(args, "LL:lora_per_example_grad_workspace_size", "lora_per_example_grad_workspace_size",
                          peftc_lora_per_example_grad_workspace_size);
}

static PyObject *py_kmeans_assign_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    return workspace_size(args, "LL:kmeans_assign_workspace_size", "kmeans_assign_workspace_size",
                          peftc_kmeans_assign_workspace_size);
}

static PyObject *py_kmeans_assign(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_labels, *o_dist, *o_work, *o_x, *o_c;
    if (!PyArg_ParseTuple(args, "OOOOO:kmeans_assign", &o_labels, &o_dist, &o_work, &o_x, &o_c))
        return NULL;
    ARG_CHECK(ck, "kmeans_assign");
    int64_t *labels;
    float *dist, *work, *x, *c;
    if (arg_i64(&ck, "labels", o_labels, "N", ARG_OUT, &labels) < 0 ||
        arg_f32(&ck, "dist", o_dist, "N", ARG_OUT, &dist) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "x", o_x, "N D", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "centroids", o_c, "K D", ARG_IN, &c) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), D = arg_dim(&ck, "D"), K = arg_dim(&ck, "K");
    if (arg_workspace(&ck, peftc_kmeans_assign_workspace_size(N, K)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_kmeans_assign(labels, dist, work, x, c, N, D, K);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_kmeans_update(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_c, *o_counts, *o_x, *o_labels;
    if (!PyArg_ParseTuple(args, "OOOO:kmeans_update", &o_c, &o_counts, &o_x, &o_labels))
        return NULL;
    ARG_CHECK(ck, "kmeans_update");
    float *c, *x;
    int64_t *counts, *labels;
    if (arg_f32(&ck, "centroids", o_c, "K D", ARG_OUT, &c) < 0 ||
        arg_i64(&ck, "counts", o_counts, "K", ARG_OUT, &counts) < 0 || arg_f32(&ck, "x", o_x, "N D", ARG_IN, &x) < 0 ||
        arg_i64(&ck, "labels", o_labels, "N", ARG_IN, &labels) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_kmeans_update(c, counts, x, labels, arg_dim(&ck, "N"), arg_dim(&ck, "D"), arg_dim(&ck, "K"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_lifelong_methods[] = {
    {"lora_per_example_grad", py_lora_per_example_grad, METH_VARARGS,
     "lora_per_example_grad(dlora_A, dlora_B, work, x, dy, lora_A, lora_B, offsets, scaling): per-example LoRA "
     "gradients, accumulated"},
    {"lora_per_example_grad_workspace_size", py_lora_per_example_grad_workspace_size, METH_VARARGS,
     "lora_per_example_grad_workspace_size(N, R) -> floats"},
    {"kmeans_assign", py_kmeans_assign, METH_VARARGS,
     "kmeans_assign(labels, dist, work, x, centroids): nearest centroid and squared distance per row"},
    {"kmeans_assign_workspace_size", py_kmeans_assign_workspace_size, METH_VARARGS,
     "kmeans_assign_workspace_size(N, K) -> floats"},
    {"kmeans_update", py_kmeans_update, METH_VARARGS,
     "kmeans_update(centroids, counts, x, labels): centroids of non-empty clusters = mean of their rows"},
    {NULL, NULL, 0, NULL},
};
