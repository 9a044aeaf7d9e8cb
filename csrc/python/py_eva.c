/* py_eva.c: Python entry points for EVA's incremental PCA step (eva.c), the EVA section of peftc.h.
 * Shapes come from the arrays; the wrapper is parse, validate, release the GIL, call, map the status. */
#include "args.h"

static PyObject *py_ipca_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long M, IC, K;
    if (!PyArg_ParseTuple(args, "LLL:ipca_workspace_size", &M, &IC, &K))
        return NULL;
    if (M < 0 || IC <= 0 || K < 0) {
        PyErr_Format(PyExc_ValueError, "ipca_workspace_size: need M >= 0, IC > 0, K >= 0, got M=%lld IC=%lld K=%lld", M,
                     IC, K);
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

/* Check one update's arrays (components, singular_values, mean, var, explained_variance_ratio, cosine,
 * work, x) and n_seen into job; -1 with a Python exception set on bad input. The messages start with
 * `fn` (which names the job in ipca_update_many). */
static int parse_ipca_job(ArgCheck *ck, const char *fn, PyObject *const *o, long long n_seen, peftc_ipca_job *job)
{
    arg_init(ck, fn);
    float *comp, *sing, *mean, *var, *evr, *cos, *work, *x;
    if (arg_f32(ck, "components", o[0], "K IC", ARG_OUT, &comp) < 0 ||
        arg_f32(ck, "singular_values", o[1], "K", ARG_OUT, &sing) < 0 ||
        arg_f32(ck, "mean", o[2], "IC", ARG_OUT, &mean) < 0 || arg_f32(ck, "var", o[3], "IC", ARG_OUT, &var) < 0 ||
        arg_f32(ck, "explained_variance_ratio", o[4], "K", ARG_OUT, &evr) < 0 ||
        arg_f32(ck, "cosine", o[5], "K", ARG_OUT, &cos) < 0 || arg_f32(ck, "work", o[6], "W", ARG_OUT, &work) < 0 ||
        arg_f32(ck, "x", o[7], "M IC", ARG_IN, &x) < 0 || arg_no_alias(ck) < 0)
        return -1;
    const int64_t M = arg_dim(ck, "M"), IC = arg_dim(ck, "IC"), K = arg_dim(ck, "K");
    if (n_seen < 0) {
        PyErr_Format(PyExc_ValueError, "%s: n_seen must be >= 0, got %lld", fn, n_seen);
        return -1;
    }
    if (K == 0 || K > IC) {
        PyErr_Format(PyExc_ValueError,
                     "%s: the number of components K=%lld must be in [1, IC=%lld] ('components' is (K, IC))", fn,
                     (long long)K, (long long)IC);
        return -1;
    }
    if (M == 0 || (n_seen == 0 && K > M)) {
        PyErr_Format(PyExc_ValueError, "%s: 'x' has M=%lld rows, too few for K=%lld components%s", fn, (long long)M,
                     (long long)K, n_seen == 0 ? " on the first update (need M >= K)" : "");
        return -1;
    }
    const int64_t need = peftc_ipca_workspace_size(M, IC, K);
    if (need < 0 || arg_dim(ck, "W") < need) {
        PyErr_Format(PyExc_ValueError,
                     "%s: 'work' has %lld floats, needs %lld for 'x' of shape (%lld, %lld) and K=%lld", fn,
                     (long long)arg_dim(ck, "W"), (long long)need, (long long)M, (long long)IC, (long long)K);
        return -1;
    }
    if ((uintptr_t)work % sizeof(double) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: 'work' must be 8-byte aligned (allocate it with np.empty)", fn);
        return -1;
    }
    *job = (peftc_ipca_job){comp, sing, mean, var, evr, cos, work, x, n_seen, M, IC, K, PEFTC_OK};
    return 0;
}

/* the Python exception for a job whose kernel status is not PEFTC_OK */
static PyObject *ipca_job_error(const char *fn, const peftc_ipca_job *job)
{
    if (job->status == PEFTC_ERR_NONFINITE) {
        PyErr_Format(PyExc_ValueError, "%s: 'x' (%lld, %lld) holds NaN or Inf", fn, (long long)job->M,
                     (long long)job->IC);
        return NULL;
    }
    return arg_status_error(fn, job->status);
}

static PyObject *py_ipca_update(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o[8];
    long long n_seen;
    if (!PyArg_ParseTuple(args, "OOOOOOOOL:ipca_update", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                          &n_seen))
        return NULL;
    ARG_CHECK(ck, NULL);
    peftc_ipca_job job;
    if (parse_ipca_job(&ck, "ipca_update", o, n_seen, &job) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    job.status = peftc_ipca_update(job.components, job.singular, job.mean, job.var, job.evr, job.cosine, job.work,
                                   job.x, job.n_seen, job.M, job.IC, job.K);
    Py_END_ALLOW_THREADS
    if (job.status != PEFTC_OK)
        return ipca_job_error("ipca_update", &job);
    Py_RETURN_NONE;
}

/* ipca_update_many(jobs): jobs is a list of (components, singular_values, mean, var,
 * explained_variance_ratio, cosine, work, x, n_seen) tuples. Returns a list with, per job, None or
 * the message of its failure (the other jobs are applied all the same). */
static PyObject *py_ipca_update_many(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_jobs;
    if (!PyArg_ParseTuple(args, "O!:ipca_update_many", &PyList_Type, &o_jobs))
        return NULL;
    const Py_ssize_t count = PyList_GET_SIZE(o_jobs);
    ArgCheck *checks = PyMem_Calloc(count > 0 ? (size_t)count : 1, sizeof(ArgCheck));
    peftc_ipca_job *jobs = PyMem_Calloc(count > 0 ? (size_t)count : 1, sizeof(peftc_ipca_job));
    typedef char job_name[48]; /* "ipca_update_many: jobs[i]", the prefix of that job's messages */
    job_name *names = PyMem_Calloc(count > 0 ? (size_t)count : 1, sizeof(job_name));
    PyObject *result = NULL;
    if (checks == NULL || jobs == NULL || names == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        snprintf(names[i], sizeof(names[i]), "ipca_update_many: jobs[%lld]", (long long)i);
        PyObject *t = PyList_GET_ITEM(o_jobs, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 9) {
            PyErr_Format(PyExc_TypeError,
                         "%s must be a tuple (components, singular_values, mean, var, "
                         "explained_variance_ratio, cosine, work, x, n_seen), got %s",
                         names[i], Py_TYPE(t)->tp_name);
            goto done;
        }
        const long long n_seen = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 8));
        if (n_seen == -1 && PyErr_Occurred())
            goto done;
        PyObject *o[8];
        for (int k = 0; k < 8; k++)
            o[k] = PyTuple_GET_ITEM(t, k);
        if (parse_ipca_job(&checks[i], names[i], o, n_seen, &jobs[i]) < 0)
            goto done;
        for (Py_ssize_t j = 0; j < i; j++) {
            const char *a, *b;
            if (arg_overlap(&checks[i], &checks[j], &a, &b) || arg_overlap(&checks[j], &checks[i], &b, &a)) {
                PyErr_Format(PyExc_ValueError,
                             "ipca_update_many: '%s' of jobs[%lld] and '%s' of jobs[%lld] overlap in "
                             "memory (one of them is written)",
                             a, (long long)i, b, (long long)j);
                goto done;
            }
        }
    }
    Py_BEGIN_ALLOW_THREADS
    peftc_ipca_update_many(jobs, count);
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = Py_None;
        Py_INCREF(item);
        if (jobs[i].status != PEFTC_OK) {
            Py_DECREF(item);
            ipca_job_error(names[i], &jobs[i]);
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            item = PyObject_Str(value);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            if (item == NULL) {
                Py_CLEAR(result);
                goto done;
            }
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    for (Py_ssize_t i = 0; checks && i < count; i++)
        arg_release(&checks[i]);
    PyMem_Free(checks);
    PyMem_Free(jobs);
    PyMem_Free(names);
    return result;
}

PyMethodDef peftc_py_eva_methods[] = {
    {"ipca_workspace_size", py_ipca_workspace_size, METH_VARARGS,
     "ipca_workspace_size(M, IC, K) -> floats of scratch ipca_update needs"},
    {"ipca_update", py_ipca_update, METH_VARARGS,
     "ipca_update(components, singular_values, mean, var, explained_variance_ratio, cosine, work, x, n_seen)"},
    {"ipca_update_many", py_ipca_update_many, METH_VARARGS,
     "ipca_update_many(jobs) -> [None or error message per job]; each job is ipca_update's argument tuple"},
    {NULL, NULL, 0, NULL},
};
