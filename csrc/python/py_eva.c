/* py_eva.c: Python entry points for EVA's incremental PCA step. Shapes come from the arrays; the
 * wrapper is parse, validate, release the GIL, call, map the status. */
#include "args.h"

static PyObject *py_ipca_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long M, IC, K;
    if (!PyArg_ParseTuple(args, "LLL:ipca_workspace_size", &M, &IC, &K))
        return NULL;
    if (M < 0 || IC <= 0 || K < 0) {
        PyErr_Format(PyExc_ValueError, "ipca_workspace_size: need M >= 0, IC > 0, K >= 0, got M=%lld IC=%lld K=%lld",
                     M, IC, K);
        return NULL;
    }
    int64_t need;
    Py_BEGIN_ALLOW_THREADS
    need = peftc_ipca_workspace_size(M, IC, K);
    Py_END_ALLOW_THREADS
    if (need < 0) {
        PyErr_Format(PyExc_ValueError, "ipca_workspace_size: sizes M=%lld IC=%lld K=%lld exceed the LAPACK interface",
                     M, IC, K);
        return NULL;
    }
    return PyLong_FromLongLong(need);
}

static PyObject *py_ipca_update(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_comp, *o_sing, *o_mean, *o_var, *o_evr, *o_cos, *o_work, *o_x;
    long long n_seen;
    if (!PyArg_ParseTuple(args, "OOOOOOOOL:ipca_update", &o_comp, &o_sing, &o_mean, &o_var, &o_evr, &o_cos, &o_work,
                          &o_x, &n_seen))
        return NULL;
    ArgCheck ck;
    arg_init(&ck, "ipca_update");
    float *comp, *sing, *mean, *var, *evr, *cos, *work, *x;
    if (arg_f32(&ck, "components", o_comp, "K IC", ARG_OUT, &comp) < 0 ||
        arg_f32(&ck, "singular_values", o_sing, "K", ARG_OUT, &sing) < 0 ||
        arg_f32(&ck, "mean", o_mean, "IC", ARG_OUT, &mean) < 0 ||
        arg_f32(&ck, "var", o_var, "IC", ARG_OUT, &var) < 0 ||
        arg_f32(&ck, "explained_variance_ratio", o_evr, "K", ARG_OUT, &evr) < 0 ||
        arg_f32(&ck, "cosine", o_cos, "K", ARG_OUT, &cos) < 0 || arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_f32(&ck, "x", o_x, "M IC", ARG_IN, &x) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t M = arg_dim(&ck, "M"), IC = arg_dim(&ck, "IC"), K = arg_dim(&ck, "K");
    if (n_seen < 0) {
        PyErr_Format(PyExc_ValueError, "ipca_update: n_seen must be >= 0, got %lld", n_seen);
        return NULL;
    }
    if (K == 0 || K > IC) {
        PyErr_Format(PyExc_ValueError,
                     "ipca_update: the number of components K=%lld must be in [1, IC=%lld] ('components' is (K, IC))",
                     (long long)K, (long long)IC);
        return NULL;
    }
    if (M == 0 || (n_seen == 0 && K > M)) {
        PyErr_Format(PyExc_ValueError,
                     "ipca_update: 'x' has M=%lld rows, too few for K=%lld components%s", (long long)M, (long long)K,
                     n_seen == 0 ? " on the first update (need M >= K)" : "");
        return NULL;
    }
    int64_t need;
    Py_BEGIN_ALLOW_THREADS
    need = peftc_ipca_workspace_size(M, IC, K);
    Py_END_ALLOW_THREADS
    if (need < 0 || arg_dim(&ck, "W") < need) {
        PyErr_Format(PyExc_ValueError,
                     "ipca_update: 'work' has %lld floats, needs %lld for 'x' of shape (%lld, %lld) and K=%lld",
                     (long long)arg_dim(&ck, "W"), (long long)need, (long long)M, (long long)IC, (long long)K);
        return NULL;
    }
    if ((uintptr_t)work % sizeof(double) != 0) {
        PyErr_SetString(PyExc_ValueError, "ipca_update: 'work' must be 8-byte aligned (allocate it with np.empty)");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_ipca_update(comp, sing, mean, var, evr, cos, work, x, n_seen, M, IC, K);
    Py_END_ALLOW_THREADS
    if (st == PEFTC_ERR_NONFINITE) {
        PyErr_Format(PyExc_ValueError, "ipca_update: 'x' (%lld, %lld) holds NaN or Inf", (long long)M, (long long)IC);
        return NULL;
    }
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_eva_methods[] = {
    {"ipca_workspace_size", py_ipca_workspace_size, METH_VARARGS,
     "ipca_workspace_size(M, IC, K) -> floats of scratch ipca_update needs"},
    {"ipca_update", py_ipca_update, METH_VARARGS,
     "ipca_update(components, singular_values, mean, var, explained_variance_ratio, cosine, work, x, n_seen)"},
    {NULL, NULL, 0, NULL},
};
