/* py_linear_lora.c: Python entry points for the linear layer and LoRA section of peftc.h: the frozen
 * or trainable linear layer (linear.c) and the LoRA layer (lora.c). Shapes come from the arrays; every
 * wrapper is parse, validate, release the GIL, call, map the status. The other adapters are in
 * py_adapters.c. */
#include "args.h"

static PyObject *py_linear_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_x, *o_w, *o_b;
    if (!PyArg_ParseTuple(args, "OOOO:linear_forward", &o_y, &o_x, &o_w, &o_b))
        return NULL;
    ARG_CHECK(ck, "linear_forward");
    float *y, *x, *w, *b;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 || arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 || arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_linear_forward(y, x, w, b, arg_dim(&ck, "N"), arg_dim(&ck, "IC"), arg_dim(&ck, "OC"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_linear_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dw, *o_db, *o_dy, *o_x, *o_w;
    if (!PyArg_ParseTuple(args, "OOOOOO:linear_backward", &o_dx, &o_dw, &o_db, &o_dy, &o_x, &o_w))
        return NULL;
    ARG_CHECK(ck, "linear_backward");
    float *dx, *dw, *db, *dy, *x, *w;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dweight", o_dw, "OC IC", ARG_OUT | ARG_OPTIONAL, &dw) < 0 ||
        arg_f32(&ck, "dbias", o_db, "OC", ARG_OUT | ARG_OPTIONAL, &db) < 0 ||
        arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN | (o_dw == Py_None ? ARG_OPTIONAL : 0), &x) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (arg_dim(&ck, "IC") < 0) {
        PyErr_SetString(PyExc_ValueError, "linear_backward: give dx or x so that IC is known");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_linear_backward(dx, dw, db, dy, x, w, arg_dim(&ck, "N"), arg_dim(&ck, "IC"), arg_dim(&ck, "OC"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_lora_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_xd, *o_u, *o_x, *o_w, *o_b, *o_a, *o_bm, *o_bb;
    float scale, p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOffKK:lora_forward", &o_y, &o_xd, &o_u, &o_x, &o_w, &o_b, &o_a, &o_bm, &o_bb,
                          &scale, &p, &seed, &offset))
        return NULL;
    ARG_CHECK(ck, "lora_forward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *y, *xd, *u, *x, *w, *b, *a, *bm, *bb;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 ||
        arg_f32(&ck, "xd", o_xd, "N IC", ARG_OUT | (p > 0.0f ? 0 : ARG_OPTIONAL), &xd) < 0 ||
        arg_f32(&ck, "u", o_u, "N R", ARG_OUT, &u) < 0 || arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 || arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "lora_A", o_a, "R IC", ARG_IN, &a) < 0 || arg_f32(&ck, "lora_B", o_bm, "OC R", ARG_IN, &bm) < 0 ||
        arg_f32(&ck, "lora_bias", o_bb, "OC", ARG_OPTIONAL, &bb) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (p == 0.0f && xd) {
        PyErr_SetString(PyExc_ValueError, "lora_forward: 'xd' must be None when dropout is 0");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_lora_forward(y, xd, u, x, w, b, a, bm, bb, scale, p, seed, offset, arg_dim(&ck, "N"), arg_dim(&ck, "IC"),
                            arg_dim(&ck, "OC"), arg_dim(&ck, "R"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_lora_backward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long N, IC, R;
    float p;
    if (!PyArg_ParseTuple(args, "LLLf:lora_backward_workspace_size", &N, &IC, &R, &p))
        return NULL;
    if (N < 0 || IC < 0 || R < 0) {
        PyErr_Format(PyExc_ValueError, "lora_backward_workspace_size: sizes must be >= 0, got N=%lld IC=%lld R=%lld", N,
                     IC, R);
        return NULL;
    }
    /* N * (R + IC) floats at most: refuse sizes whose product overflows int64 rather than wrap */
    if (R > INT64_MAX - IC || (R + IC > 0 && N > INT64_MAX / (R + IC))) {
        PyErr_Format(PyExc_ValueError, "lora_backward_workspace_size: N=%lld with IC=%lld and R=%lld overflows int64",
                     N, IC, R);
        return NULL;
    }
    return PyLong_FromLongLong(peftc_lora_backward_workspace_size(N, IC, R, p));
}

static PyObject *py_lora_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_da, *o_dbm, *o_dbb, *o_work, *o_dy, *o_xin, *o_u, *o_w, *o_a, *o_bm;
    float scale, p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOffKK:lora_backward", &o_dx, &o_da, &o_dbm, &o_dbb, &o_work, &o_dy, &o_xin,
                          &o_u, &o_w, &o_a, &o_bm, &scale, &p, &seed, &offset))
        return NULL;
    ARG_CHECK(ck, "lora_backward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *dx, *da, *dbm, *dbb, *work, *dy, *xin, *u, *w, *a, *bm;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dlora_A", o_da, "R IC", ARG_OUT | ARG_OPTIONAL, &da) < 0 ||
        arg_f32(&ck, "dlora_B", o_dbm, "OC R", ARG_OUT | ARG_OPTIONAL, &dbm) < 0 ||
        arg_f32(&ck, "dlora_bias", o_dbb, "OC", ARG_OUT | ARG_OPTIONAL, &dbb) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "xin", o_xin, "N IC", ARG_IN, &xin) < 0 || arg_f32(&ck, "u", o_u, "N R", ARG_IN, &u) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 || arg_f32(&ck, "lora_A", o_a, "R IC", ARG_IN, &a) < 0 ||
        arg_f32(&ck, "lora_B", o_bm, "OC R", ARG_IN, &bm) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC"), R = arg_dim(&ck, "R");
    if (arg_workspace(&ck, peftc_lora_backward_workspace_size(N, IC, R, p)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_lora_backward(dx, da, dbm, dbb, work, dy, xin, u, w, a, bm, scale, p, seed, offset, N, IC, OC, R);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_lora_merge(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_w, *o_b, *o_a, *o_bm, *o_bb;
    float scale, sign;
    if (!PyArg_ParseTuple(args, "OOOOOff:lora_merge", &o_w, &o_b, &o_a, &o_bm, &o_bb, &scale, &sign))
        return NULL;
    ARG_CHECK(ck, "lora_merge");
    float *w, *b, *a, *bm, *bb;
    if (arg_f32(&ck, "weight", o_w, "OC IC", ARG_OUT, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OUT | ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "lora_A", o_a, "R IC", ARG_IN, &a) < 0 || arg_f32(&ck, "lora_B", o_bm, "OC R", ARG_IN, &bm) < 0 ||
        arg_f32(&ck, "lora_bias", o_bb, "OC", ARG_OPTIONAL, &bb) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (bb && !b) {
        PyErr_SetString(PyExc_ValueError, "lora_merge: 'lora_bias' is given but the base layer has no 'bias'");
        return NULL;
    }
    if (sign != 1.0f && sign != -1.0f) {
        PyErr_SetString(PyExc_ValueError, "lora_merge: 'sign' must be 1 or -1");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_lora_merge(w, bb ? b : NULL, a, bm, bb, scale, sign, arg_dim(&ck, "IC"), arg_dim(&ck, "OC"),
                          arg_dim(&ck, "R"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_linear_lora_methods[] = {
    {"linear_forward", py_linear_forward, METH_VARARGS, "linear_forward(y, x, weight, bias): y = x weight^T + bias"},
    {"linear_backward", py_linear_backward, METH_VARARGS,
     "linear_backward(dx, dweight, dbias, dy, x, weight): accumulate gradients (None = not wanted)"},
    {"lora_forward", py_lora_forward, METH_VARARGS,
     "lora_forward(y, xd, u, x, weight, bias, lora_A, lora_B, lora_bias, scale, p, seed, offset)"},
    {"lora_backward_workspace_size", py_lora_backward_workspace_size, METH_VARARGS,
     "lora_backward_workspace_size(N, IC, R, p) -> floats of scratch lora_backward needs"},
    {"lora_backward", py_lora_backward, METH_VARARGS,
     "lora_backward(dx, dlora_A, dlora_B, dlora_bias, work, dy, xin, u, weight, lora_A, lora_B, scale, p, seed, "
     "offset)"},
    {"lora_merge", py_lora_merge, METH_VARARGS,
     "lora_merge(weight, bias, lora_A, lora_B, lora_bias, scale, sign): weight += sign*scale*lora_B@lora_A"},
    {NULL, NULL, 0, NULL},
};
