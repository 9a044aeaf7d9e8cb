/* py_bf16.c: Python entry points for the bf16 frozen linear layer (bf16_gemm.h): the paths this CPU runs,
 * rounding and packing, and the forward and input-gradient products. Packed weights and bf16 values
 * are uint16 arrays. A path is given by its number (peftc_bf16_path); one the CPU cannot run raises
 * RuntimeError here, before any kernel runs. Every wrapper is parse, validate, release the GIL, call,
 * map the status. */
#include "args.h"

#include "../bf16_gemm.h"

static const char *const path_names[PEFTC_BF16_NPATHS] = {"generic", "avx2", "avx512f", "avx512bf16"};

static int check_path(const char *fn, int path)
{
    if (path < 0 || path >= PEFTC_BF16_NPATHS) {
        PyErr_Format(PyExc_ValueError, "%s: argument 'path' must be in [0, %d), got %d", fn, PEFTC_BF16_NPATHS, path);
        return -1;
    }
    if (peftc_bf16_path_supported((peftc_bf16_path)path))
        return 0;
    char can[64] = "";
    for (int p = PEFTC_BF16_NPATHS - 1; p >= 0; p--)
        if (peftc_bf16_path_supported((peftc_bf16_path)p))
            snprintf(can + strlen(can), sizeof(can) - strlen(can), "%s%s", can[0] ? ", " : "", path_names[p]);
    PyErr_Format(PyExc_RuntimeError, "%s: the bf16 path '%s' needs instructions this CPU does not have; it runs: %s",
                 fn, path_names[path], can);
    return -1;
}

/* the packed weight's row length KP must be the one x's (or dx's) IC packs to */
static int check_padded(const ArgCheck *ck, const char *packed, const char *source)
{
    const int64_t IC = arg_dim(ck, "IC"), KP = arg_dim(ck, "KP");
    if (KP == peftc_bf16_padded_ic(IC))
        return 0;
    PyErr_Format(PyExc_ValueError,
                 "%s: argument '%s' has rows of KP = %lld bf16 values, but '%s' has IC = %lld, which packs to "
                 "KP = %lld: it was packed for other dimensions",
                 ck->fn, packed, (long long)KP, source, (long long)IC, (long long)peftc_bf16_padded_ic(IC));
    return -1;
}

static PyObject *py_bf16_cpu_paths(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    PyObject *out = PyList_New(0);
    for (int p = PEFTC_BF16_NPATHS - 1; out && p >= 0; p--) {
        if (!peftc_bf16_path_supported((peftc_bf16_path)p))
            continue;
        PyObject *name = PyUnicode_FromString(path_names[p]);
        if (!name || PyList_Append(out, name) < 0)
            Py_CLEAR(out);
        Py_XDECREF(name);
    }
    return out;
}

static PyObject *py_bf16_round(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_x;
    if (!PyArg_ParseTuple(args, "OO:bf16_round", &o_out, &o_x))
        return NULL;
    ARG_CHECK(ck, "bf16_round");
    uint16_t *out;
    float *x;
    if (arg_u16(&ck, "out", o_out, "*", ARG_OUT, &out) < 0 || arg_f32(&ck, "x", o_x, "*", ARG_IN, &x) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bf16_round(out, x, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bf16_pack(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_wp, *o_w;
    if (!PyArg_ParseTuple(args, "OO:bf16_pack", &o_wp, &o_w))
        return NULL;
    ARG_CHECK(ck, "bf16_pack");
    uint16_t *wp;
    float *w;
    if (arg_u16(&ck, "packed", o_wp, "OC KP", ARG_OUT, &wp) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 || arg_no_alias(&ck) < 0 ||
        check_padded(&ck, "packed", "weight") < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bf16_pack(wp, w, arg_dim(&ck, "IC"), arg_dim(&ck, "OC"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bf16_unpack(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_w, *o_wp;
    if (!PyArg_ParseTuple(args, "OO:bf16_unpack", &o_w, &o_wp))
        return NULL;
    ARG_CHECK(ck, "bf16_unpack");
    float *w;
    uint16_t *wp;
    if (arg_f32(&ck, "weight", o_w, "OC IC", ARG_OUT, &w) < 0 ||
        arg_u16(&ck, "packed", o_wp, "OC KP", ARG_IN, &wp) < 0 || arg_no_alias(&ck) < 0 ||
        check_padded(&ck, "packed", "weight") < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bf16_unpack(w, wp, arg_dim(&ck, "IC"), arg_dim(&ck, "OC"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bf16_linear_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long N, IC;
    int path;
    if (!PyArg_ParseTuple(args, "LLi:bf16_linear_workspace_size", &N, &IC, &path))
        return NULL;
    if (path < 0 || path >= PEFTC_BF16_NPATHS) { /* a size query: any path, run here or not */
        PyErr_Format(PyExc_ValueError, "bf16_linear_workspace_size: argument 'path' must be in [0, %d), got %d",
                     PEFTC_BF16_NPATHS, path);
        return NULL;
    }
    const int64_t size = peftc_bf16_linear_workspace_size(N, IC, (peftc_bf16_path)path);
    if (size < 0) {
        PyErr_Format(PyExc_ValueError,
                     "bf16_linear_workspace_size: sizes must be >= 0 and not overflow, got N=%lld "
                     "IC=%lld",
                     N, IC);
        return NULL;
    }
    return PyLong_FromLongLong(size);
}

static PyObject *py_bf16_linear_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_work, *o_x, *o_wp, *o_b;
    int accumulate, path;
    if (!PyArg_ParseTuple(args, "OOOOOpi:bf16_linear_forward", &o_y, &o_work, &o_x, &o_wp, &o_b, &accumulate, &path))
        return NULL;
    ARG_CHECK(ck, "bf16_linear_forward");
    if (check_path(ck.fn, path) < 0)
        return NULL;
    float *y, *work, *x, *b;
    uint16_t *wp;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT | ARG_OPTIONAL, &work) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 ||
        arg_u16(&ck, "packed_weight", o_wp, "OC KP", ARG_IN, &wp) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 || arg_no_alias(&ck) < 0 ||
        check_padded(&ck, "packed_weight", "x") < 0 ||
        arg_workspace(
            &ck, peftc_bf16_linear_workspace_size(arg_dim(&ck, "N"), arg_dim(&ck, "IC"), (peftc_bf16_path)path)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bf16_linear_forward(y, work, x, wp, b, accumulate, (peftc_bf16_path)path, arg_dim(&ck, "N"),
                                   arg_dim(&ck, "IC"), arg_dim(&ck, "OC"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bf16_linear_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dy, *o_wp;
    int path;
    if (!PyArg_ParseTuple(args, "OOOi:bf16_linear_backward", &o_dx, &o_dy, &o_wp, &path))
        return NULL;
    ARG_CHECK(ck, "bf16_linear_backward");
    if (check_path(ck.fn, path) < 0)
        return NULL;
    float *dx, *dy;
    uint16_t *wp;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT, &dx) < 0 || arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_u16(&ck, "packed_weight", o_wp, "OC KP", ARG_IN, &wp) < 0 || arg_no_alias(&ck) < 0 ||
        check_padded(&ck, "packed_weight", "dx") < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bf16_linear_backward(dx, dy, wp, (peftc_bf16_path)path, arg_dim(&ck, "N"), arg_dim(&ck, "IC"),
                                    arg_dim(&ck, "OC"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bf16_dot_peak(PyObject *self, PyObject *args)
{
    (void)self;
    long long iterations, threads;
    if (!PyArg_ParseTuple(args, "LL:bf16_dot_peak", &iterations, &threads))
        return NULL;
    if (check_path("bf16_dot_peak", PEFTC_BF16_AVX512BF16) < 0)
        return NULL;
    if (iterations < 0 || threads < 1 || threads > 64) {
        PyErr_Format(PyExc_ValueError, "bf16_dot_peak: need iterations >= 0 and threads in [1, 64], got %lld, %lld",
                     iterations, threads);
        return NULL;
    }
    float checksum[64];
    int64_t flops = 0;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bf16_dot_peak(checksum, &flops, iterations, threads);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error("bf16_dot_peak", st);
    double sum = 0.0;
    for (long long t = 0; t < threads; t++)
        sum += checksum[t];
    return Py_BuildValue("(Ld)", (long long)flops, sum);
}

PyMethodDef peftc_py_bf16_methods[] = {
    {"bf16_cpu_paths", py_bf16_cpu_paths, METH_NOARGS, "names of the bf16 paths this CPU runs, fastest first"},
    {"bf16_round", py_bf16_round, METH_VARARGS, "bf16_round(out, x): out = bf16(x), round to nearest even"},
    {"bf16_pack", py_bf16_pack, METH_VARARGS, "bf16_pack(packed, weight): pack a frozen weight"},
    {"bf16_unpack", py_bf16_unpack, METH_VARARGS, "bf16_unpack(weight, packed): a packed weight's float32 values"},
    {"bf16_linear_workspace_size", py_bf16_linear_workspace_size, METH_VARARGS,
     "bf16_linear_workspace_size(N, IC, path): floats of scratch of bf16_linear_forward"},
    {"bf16_linear_forward", py_bf16_linear_forward, METH_VARARGS,
     "bf16_linear_forward(y, work, x, packed_weight, bias, accumulate, path)"},
    {"bf16_linear_backward", py_bf16_linear_backward, METH_VARARGS,
     "bf16_linear_backward(dx, dy, packed_weight, path): dx += dy w"},
    {"bf16_dot_peak", py_bf16_dot_peak, METH_VARARGS,
     "bf16_dot_peak(iterations, threads) -> (flops, checksum): the vdpbf16ps peak loop (AVX512-BF16 only)"},
    {NULL, NULL, 0, NULL},
};
