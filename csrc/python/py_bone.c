/* py_bone.c: Python entry points for the Bone / MiSS and Bat kernels (bone.c). Shapes come from the
 * arrays; every wrapper is parse, validate, release the GIL, call, map the status. The divisibility
 * rules of each variant are checked here so the error can name r and the sizes. */
#include "args.h"

/* Bone / MiSS: R > 0 and OC % MR == 0 (MR == OC for "balance"). */
static int bone_check_sizes(const ArgCheck *ck)
{
    const int64_t OC = arg_dim(ck, "OC"), R = arg_dim(ck, "R"), MR = arg_dim(ck, "MR");
    if (R <= 0 || MR <= 0 || OC % MR != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s: argument 'miss_block' has shape (r=%lld, %lld) and 'weight' has out_features=%lld; r must "
                     "be > 0 and out_features a multiple of the block's columns (mini_r)",
                     ck->fn, (long long)R, (long long)MR, (long long)OC);
        return -1;
    }
    return 0;
}

/* Bat: IC % R == 0 and NB * R == OC. */
static int bat_check_sizes(const ArgCheck *ck)
{
    const int64_t IC = arg_dim(ck, "IC"), OC = arg_dim(ck, "OC"), R = arg_dim(ck, "R"), NB = arg_dim(ck, "NB");
    if (R <= 0 || IC % R != 0 || OC % R != 0 || NB * R != OC) {
        PyErr_Format(PyExc_ValueError,
                     "%s: Bat needs argument 'weight' shape (out_features, in_features) with in_features=%lld and "
                     "out_features=%lld multiples of r=%lld, and 'miss_block' shape (out_features/r, r, r); got "
                     "shape (%lld, %lld, %lld)",
                     ck->fn, (long long)IC, (long long)OC, (long long)R, (long long)NB, (long long)R, (long long)R);
        return -1;
    }
    return 0;
}

static PyObject *py_bone_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_s, *o_xd, *o_x, *o_w, *o_b, *o_d;
    float p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOOOOOOfKK:bone_forward", &o_y, &o_s, &o_xd, &o_x, &o_w, &o_b, &o_d, &p, &seed,
                          &offset))
        return NULL;
    ArgCheck ck;
    arg_init(&ck, "bone_forward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *y, *s, *xd, *x, *w, *b, *d;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 || arg_f32(&ck, "s", o_s, "N R", ARG_OUT, &s) < 0 ||
        arg_f32(&ck, "xd", o_xd, "N IC", ARG_OUT | (p > 0.0f ? 0 : ARG_OPTIONAL), &xd) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "miss_block", o_d, "R MR", ARG_IN, &d) < 0 || arg_no_alias(&ck) < 0 ||
        bone_check_sizes(&ck) < 0)
        return NULL;
    if (p == 0.0f && xd) {
        PyErr_SetString(PyExc_ValueError, "bone_forward: 'xd' must be None when dropout is 0");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bone_forward(y, s, xd, x, w, b, d, p, seed, offset, arg_dim(&ck, "N"), arg_dim(&ck, "IC"),
                            arg_dim(&ck, "OC"), arg_dim(&ck, "R"), arg_dim(&ck, "MR"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bone_backward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long N, IC, R;
    float p;
    if (!PyArg_ParseTuple(args, "LLLf:bone_backward_workspace_size", &N, &IC, &R, &p))
        return NULL;
    if (N < 0 || IC < 0 || R < 0) {
        PyErr_Format(PyExc_ValueError, "bone_backward_workspace_size: sizes must be >= 0, got N=%lld IC=%lld R=%lld",
                     N, IC, R);
        return NULL;
    }
    return PyLong_FromLongLong(peftc_bone_backward_workspace_size(N, IC, R, p));
}

static PyObject *py_bone_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dd, *o_work, *o_dy, *o_s, *o_w, *o_d;
    float p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOOOOOOfKK:bone_backward", &o_dx, &o_dd, &o_work, &o_dy, &o_s, &o_w, &o_d, &p,
                          &seed, &offset))
        return NULL;
    ArgCheck ck;
    arg_init(&ck, "bone_backward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *dx, *dd, *work, *dy, *s, *w, *d;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dmiss_block", o_dd, "R MR", ARG_OUT | ARG_OPTIONAL, &dd) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "s", o_s, "N R", ARG_IN, &s) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "miss_block", o_d, "R MR", ARG_IN, &d) < 0 || arg_no_alias(&ck) < 0 ||
        bone_check_sizes(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), IC = arg_dim(&ck, "IC"), R = arg_dim(&ck, "R");
    if (arg_workspace(&ck, peftc_bone_backward_workspace_size(N, IC, R, p)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bone_backward(dx, dd, work, dy, s, w, d, p, seed, offset, N, IC, arg_dim(&ck, "OC"), R,
                             arg_dim(&ck, "MR"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bone_merge(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_w, *o_d;
    float sign;
    if (!PyArg_ParseTuple(args, "OOf:bone_merge", &o_w, &o_d, &sign))
        return NULL;
    ArgCheck ck;
    arg_init(&ck, "bone_merge");
    float *w, *d;
    if (arg_f32(&ck, "weight", o_w, "OC IC", ARG_OUT, &w) < 0 ||
        arg_f32(&ck, "miss_block", o_d, "R MR", ARG_IN, &d) < 0 || arg_no_alias(&ck) < 0 ||
        bone_check_sizes(&ck) < 0)
        return NULL;
    if (sign != 1.0f && sign != -1.0f) {
        PyErr_SetString(PyExc_ValueError, "bone_merge: 'sign' must be 1 or -1");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bone_merge(w, d, sign, arg_dim(&ck, "IC"), arg_dim(&ck, "OC"), arg_dim(&ck, "R"),
                          arg_dim(&ck, "MR"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bat_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_weff, *o_x, *o_w, *o_b, *o_t;
    if (!PyArg_ParseTuple(args, "OOOOOO:bat_forward", &o_y, &o_weff, &o_x, &o_w, &o_b, &o_t))
        return NULL;
    ArgCheck ck;
    arg_init(&ck, "bat_forward");
    float *y, *weff, *x, *w, *b, *t;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 ||
        arg_f32(&ck, "weff", o_weff, "OC IC", ARG_OUT, &weff) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "miss_block", o_t, "NB R R", ARG_IN, &t) < 0 || arg_no_alias(&ck) < 0 ||
        bat_check_sizes(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bat_forward(y, weff, x, w, b, t, arg_dim(&ck, "N"), arg_dim(&ck, "IC"), arg_dim(&ck, "OC"),
                           arg_dim(&ck, "R"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bat_weight(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_weff, *o_w, *o_t;
    if (!PyArg_ParseTuple(args, "OOO:bat_weight", &o_weff, &o_w, &o_t))
        return NULL;
    ArgCheck ck;
    arg_init(&ck, "bat_weight");
    float *weff, *w, *t;
    if (arg_f32(&ck, "weff", o_weff, "OC IC", ARG_OUT, &weff) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "miss_block", o_t, "NB R R", ARG_IN, &t) < 0 || arg_no_alias(&ck) < 0 ||
        bat_check_sizes(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bat_weight(weff, w, t, arg_dim(&ck, "IC"), arg_dim(&ck, "OC"), arg_dim(&ck, "R"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bat_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dt, *o_work, *o_dy, *o_x, *o_w, *o_t;
    if (!PyArg_ParseTuple(args, "OOOOOOO:bat_backward", &o_dx, &o_dt, &o_work, &o_dy, &o_x, &o_w, &o_t))
        return NULL;
    ArgCheck ck;
    arg_init(&ck, "bat_backward");
    float *dx, *dt, *work, *dy, *x, *w, *t;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dmiss_block", o_dt, "NB R R", ARG_OUT | ARG_OPTIONAL, &dt) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "miss_block", o_t, "NB R R", ARG_IN, &t) < 0 || arg_no_alias(&ck) < 0 ||
        bat_check_sizes(&ck) < 0)
        return NULL;
    const int64_t IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC");
    if (arg_workspace(&ck, peftc_bat_backward_workspace_size(IC, OC)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bat_backward(dx, dt, work, dy, x, w, t, arg_dim(&ck, "N"), IC, OC, arg_dim(&ck, "R"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bat_merge(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_w, *o_work, *o_t, *o_tinv;
    if (!PyArg_ParseTuple(args, "OOOO:bat_merge", &o_w, &o_work, &o_t, &o_tinv))
        return NULL;
    ArgCheck ck;
    arg_init(&ck, "bat_merge");
    float *w, *work, *t, *tinv;
    if (arg_f32(&ck, "weight", o_w, "OC IC", ARG_OUT, &w) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_f32(&ck, "miss_block", o_t, "NB R R", ARG_IN, &t) < 0 ||
        arg_f32(&ck, "inverse", o_tinv, "NB R R", ARG_OPTIONAL, &tinv) < 0 || arg_no_alias(&ck) < 0 ||
        bat_check_sizes(&ck) < 0)
        return NULL;
    const int64_t IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC"), R = arg_dim(&ck, "R");
    if (arg_workspace(&ck, peftc_bat_merge_workspace_size(IC, R)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = tinv ? peftc_bat_unmerge(w, work, t, tinv, IC, OC, R) : peftc_bat_merge(w, work, t, IC, OC, R);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_bone_methods[] = {
    {"bone_forward", py_bone_forward, METH_VARARGS,
     "bone_forward(y, s, xd, x, weight, bias, miss_block, p, seed, offset)"},
    {"bone_backward_workspace_size", py_bone_backward_workspace_size, METH_VARARGS,
     "bone_backward_workspace_size(N, IC, R, p) -> floats of scratch bone_backward needs"},
    {"bone_backward", py_bone_backward, METH_VARARGS,
     "bone_backward(dx, dmiss_block, work, dy, s, weight, miss_block, p, seed, offset)"},
    {"bone_merge", py_bone_merge, METH_VARARGS, "bone_merge(weight, miss_block, sign): weight += sign * tiled block"},
    {"bat_weight", py_bat_weight, METH_VARARGS, "bat_weight(weff, weight, miss_block): the effective Bat weight"},
    {"bat_forward", py_bat_forward, METH_VARARGS, "bat_forward(y, weff, x, weight, bias, miss_block)"},
    {"bat_backward", py_bat_backward, METH_VARARGS, "bat_backward(dx, dmiss_block, work, dy, x, weight, miss_block)"},
    {"bat_merge", py_bat_merge, METH_VARARGS,
     "bat_merge(weight, work, miss_block, inverse): merge in place; with inverse = (I + block)^-1, unmerge"},
    {NULL, NULL, 0, NULL},
};
