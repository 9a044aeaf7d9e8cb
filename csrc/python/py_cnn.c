/* py_cnn.c: Python entry points for the CNN ops section of peftc.h (conv2d, batch norm with its ReLU
 * and add-ReLU fusions, 2-D pooling, ReLU). Shapes come from the arrays; window sizes, strides and
 * paddings are scalars, and the output extent they imply is checked against the output array. Every
 * wrapper is parse, validate, release the GIL, call, map. */
#include "args.h"

/* Check a window sweep (kernel KH x KW, strides, paddings) over the bound IH, IW and bind OH, OW to
 * the extent it produces. `pool` adds the pooling rule that padding is at most half the window. */
static int bind_window(ArgCheck *ck, int64_t KH, int64_t KW, long long SH, long long SW, long long PH, long long PW,
                       int pool)
{
    const int64_t IH = arg_dim(ck, "IH"), IW = arg_dim(ck, "IW");
    /* the padded extent IH + 2 PH must not overflow int64 */
    if (PH > (INT64_MAX - IH) / 2 || PW > (INT64_MAX - IW) / 2) {
        PyErr_Format(PyExc_ValueError, "%s: padding (%lld, %lld) is too large for the input (%lld, %lld)", ck->fn, PH,
                     PW, (long long)IH, (long long)IW);
        return -1;
    }
    if (SH <= 0 || SW <= 0 || PH < 0 || PW < 0 || KH <= 0 || KW <= 0 || (pool && (2 * PH > KH || 2 * PW > KW))) {
        PyErr_Format(PyExc_ValueError,
                     "%s: needs kernel > 0, stride > 0, padding >= 0%s; got kernel (%lld, %lld), stride (%lld, %lld), "
                     "padding (%lld, %lld)",
                     ck->fn, pool ? " and padding <= kernel / 2" : "", (long long)KH, (long long)KW, SH, SW, PH, PW);
        return -1;
    }
    if (IH + 2 * PH < KH || IW + 2 * PW < KW) {
        PyErr_Format(PyExc_ValueError,
                     "%s: the padded input (%lld + 2*%lld, %lld + 2*%lld) is smaller than the kernel (%lld, %lld)",
                     ck->fn, (long long)IH, PH, (long long)IW, PW, (long long)KH, (long long)KW);
        return -1;
    }
    if (arg_bind(ck, "OH", (IH + 2 * PH - KH) / SH + 1, "the input height, kernel, stride and padding") < 0 ||
        arg_bind(ck, "OW", (IW + 2 * PW - KW) / SW + 1, "the input width, kernel, stride and padding") < 0)
        return -1;
    return 0;
}

static PyObject *py_conv2d_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW;
    if (!PyArg_ParseTuple(args, "LLLLLLLLLLL:conv2d_workspace_size", &N, &IC, &IH, &IW, &OC, &KH, &KW, &SH, &SW, &PH,
                          &PW))
        return NULL;
    const int64_t need = peftc_conv2d_workspace_size(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW);
    if (need < 0) {
        PyErr_Format(PyExc_ValueError,
                     "conv2d_workspace_size: no convolution or more than 2**63 floats of scratch for N=%lld IC=%lld "
                     "IH=%lld IW=%lld OC=%lld KH=%lld KW=%lld SH=%lld SW=%lld PH=%lld PW=%lld (need sizes >= 0, "
                     "kernel and stride > 0, padding >= 0, the padded input at least the kernel)",
                     N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW);
        return NULL;
    }
    return PyLong_FromLongLong(need);
}

static int check_workspace(ArgCheck *ck, int64_t SH, int64_t SW, int64_t PH, int64_t PW)
{
    const int64_t need =
        peftc_conv2d_workspace_size(arg_dim(ck, "N"), arg_dim(ck, "IC"), arg_dim(ck, "IH"), arg_dim(ck, "IW"),
                                    arg_dim(ck, "OC"), arg_dim(ck, "KH"), arg_dim(ck, "KW"), SH, SW, PH, PW);
    if (need < 0) {
        PyErr_Format(PyExc_ValueError, "%s: the sizes need more than 2**63 floats of scratch", ck->fn);
        return -1;
    }
    return arg_workspace(ck, need);
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_work, *o_x, *o_w, *o_b;
    long long SH, SW, PH, PW;
    if (!PyArg_ParseTuple(args, "OOOOOLLLL:conv2d_forward", &o_y, &o_work, &o_x, &o_w, &o_b, &SH, &SW, &PH, &PW))
        return NULL;
    ARG_CHECK(ck, "conv2d_forward");
    float *y, *work, *x, *w, *b;
    if (arg_f32(&ck, "y", o_y, "N OC OH OW", ARG_OUT, &y) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "x", o_x, "N IC IH IW", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC KH KW", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 || arg_no_alias(&ck) < 0 ||
        bind_window(&ck, arg_dim(&ck, "KH"), arg_dim(&ck, "KW"), SH, SW, PH, PW, 0) < 0 ||
        check_workspace(&ck, SH, SW, PH, PW) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_conv2d_forward(y, work, x, w, b, arg_dim(&ck, "N"), arg_dim(&ck, "IC"), arg_dim(&ck, "IH"),
                              arg_dim(&ck, "IW"), arg_dim(&ck, "OC"), arg_dim(&ck, "KH"), arg_dim(&ck, "KW"), SH, SW,
                              PH, PW);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_conv2d_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dw, *o_db, *o_work, *o_dy, *o_x, *o_w;
    long long SH, SW, PH, PW;
    int overwrite_dx = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOLLLL|p:conv2d_backward", &o_dx, &o_dw, &o_db, &o_work, &o_dy, &o_x, &o_w, &SH,
                          &SW, &PH, &PW, &overwrite_dx))
        return NULL;
    ARG_CHECK(ck, "conv2d_backward");
    float *dx, *dw, *db, *work, *dy, *x, *w;
    if (arg_f32(&ck, "dx", o_dx, "N IC IH IW", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dweight", o_dw, "OC IC KH KW", ARG_OUT | ARG_OPTIONAL, &dw) < 0 ||
        arg_f32(&ck, "dbias", o_db, "OC", ARG_OUT | ARG_OPTIONAL, &db) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_f32(&ck, "dy", o_dy, "N OC OH OW", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC IH IW", ARG_IN | (o_dw == Py_None ? ARG_OPTIONAL : 0), &x) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC KH KW", ARG_IN, &w) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (arg_dim(&ck, "IH") < 0) {
        PyErr_SetString(PyExc_ValueError, "conv2d_backward: give dx or x so that the input size is known");
        return NULL;
    }
    if (bind_window(&ck, arg_dim(&ck, "KH"), arg_dim(&ck, "KW"), SH, SW, PH, PW, 0) < 0 ||
        check_workspace(&ck, SH, SW, PH, PW) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_conv2d_backward(dx, dw, db, work, dy, x, w, overwrite_dx, arg_dim(&ck, "N"), arg_dim(&ck, "IC"),
                               arg_dim(&ck, "IH"), arg_dim(&ck, "IW"), arg_dim(&ck, "OC"), arg_dim(&ck, "KH"),
                               arg_dim(&ck, "KW"), SH, SW, PH, PW);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

enum { BN_PLAIN, BN_RELU, BN_ADD_RELU };

/* batchnorm2d_forward, batchnorm2d_relu_forward and batchnorm2d_add_relu_forward share their arguments
 * and checks; the first two take the optional map outputs (scale, shift) last, the third the residual
 * and its map (res_mean, res_scale, res_shift, each may be None) after bias */
static PyObject *bn_forward_py(PyObject *args, int kind)
{
    const char *fn = kind == BN_PLAIN  ? "batchnorm2d_forward"
                     : kind == BN_RELU ? "batchnorm2d_relu_forward"
                                       : "batchnorm2d_add_relu_forward";
    PyObject *o_y, *o_mean, *o_rstd, *o_rm, *o_rv, *o_x, *o_g, *o_b, *o_scale = Py_None, *o_shift = Py_None;
    PyObject *o_res = Py_None, *o_res_mean = Py_None, *o_res_scale = Py_None, *o_res_shift = Py_None;
    int training, ok;
    float momentum, eps;
    if (kind == BN_ADD_RELU)
        ok = PyArg_ParseTuple(args, "OOOOOOOOOOOOpff:batchnorm2d_add_relu_forward", &o_y, &o_mean, &o_rstd, &o_rm,
                              &o_rv, &o_x, &o_g, &o_b, &o_res, &o_res_mean, &o_res_scale, &o_res_shift, &training,
                              &momentum, &eps);
    else
        ok = PyArg_ParseTuple(
            args, kind == BN_RELU ? "OOOOOOOOpff|OO:batchnorm2d_relu_forward" : "OOOOOOOOpff|OO:batchnorm2d_forward",
            &o_y, &o_mean, &o_rstd, &o_rm, &o_rv, &o_x, &o_g, &o_b, &training, &momentum, &eps, &o_scale, &o_shift);
    if (!ok)
        return NULL;
    ARG_CHECK(ck, fn);
    /* running buffers are written in training mode and only read in eval mode */
    const int running_flags = (training ? ARG_OUT : ARG_IN) | (training ? ARG_OPTIONAL : 0);
    float *y, *mean, *rstd, *rm, *rv, *x, *g, *b, *scale, *shift, *res, *res_mean, *res_scale, *res_shift;
    if (arg_f32(&ck, "y", o_y, "N CH IH IW", ARG_OUT | (kind == BN_PLAIN ? ARG_OPTIONAL : 0), &y) < 0 ||
        arg_f32(&ck, "mean", o_mean, "CH", ARG_OUT, &mean) < 0 ||
        arg_f32(&ck, "rstd", o_rstd, "CH", ARG_OUT, &rstd) < 0 ||
        arg_f32(&ck, "scale", o_scale, "CH", ARG_OUT | ARG_OPTIONAL, &scale) < 0 ||
        arg_f32(&ck, "shift", o_shift, "CH", ARG_OUT | ARG_OPTIONAL, &shift) < 0 ||
        arg_f32(&ck, "running_mean", o_rm, "CH", running_flags, &rm) < 0 ||
        arg_f32(&ck, "running_var", o_rv, "CH", running_flags, &rv) < 0 ||
        arg_f32(&ck, "x", o_x, "N CH IH IW", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "weight", o_g, "CH", ARG_OPTIONAL, &g) < 0 ||
        arg_f32(&ck, "bias", o_b, "CH", ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "residual", o_res, "N CH IH IW", kind == BN_ADD_RELU ? ARG_IN : ARG_OPTIONAL, &res) < 0 ||
        arg_f32(&ck, "res_mean", o_res_mean, "CH", ARG_OPTIONAL, &res_mean) < 0 ||
        arg_f32(&ck, "res_scale", o_res_scale, "CH", ARG_OPTIONAL, &res_scale) < 0 ||
        arg_f32(&ck, "res_shift", o_res_shift, "CH", ARG_OPTIONAL, &res_shift) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), CH = arg_dim(&ck, "CH"), IH = arg_dim(&ck, "IH"), IW = arg_dim(&ck, "IW");
    if ((res_mean == NULL) != (res_scale == NULL) || (res_scale == NULL) != (res_shift == NULL)) {
        PyErr_Format(PyExc_ValueError, "%s: give all of res_mean, res_scale and res_shift, or none", fn);
        return NULL;
    }
    if ((rm == NULL) != (rv == NULL) || (scale == NULL) != (shift == NULL)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: give both running_mean and running_var (and both scale and shift), or neither", fn);
        return NULL;
    }
    if (!(eps > 0.0f) || (training && rm && !(momentum >= 0.0f && momentum <= 1.0f))) {
        const Py_ssize_t at = kind == BN_ADD_RELU ? 14 : 10; /* eps's position; momentum's is before it */
        PyErr_Format(PyExc_ValueError, "%s: needs eps > 0 and momentum in [0, 1], got eps=%R momentum=%R", fn,
                     PyTuple_GET_ITEM(args, at), PyTuple_GET_ITEM(args, at - 1));
        return NULL;
    }
    if (training && N * IH * IW < (rm ? 2 : 1)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: batch statistics need more than %d value(s) per channel, got x of shape "
                     "(%lld, %lld, %lld, %lld)",
                     fn, rm ? 1 : 0, (long long)N, (long long)CH, (long long)IH, (long long)IW);
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    if (kind == BN_ADD_RELU)
        st = peftc_batchnorm2d_add_relu_forward(y, mean, rstd, rm, rv, x, g, b, training, momentum, eps, res, res_mean,
                                                res_scale, res_shift, N, CH, IH, IW);
    else if (kind == BN_RELU)
        st = peftc_batchnorm2d_relu_forward(y, mean, rstd, scale, shift, rm, rv, x, g, b, training, momentum, eps, N,
                                            CH, IH, IW);
    else
        st = peftc_batchnorm2d_forward(y, mean, rstd, scale, shift, rm, rv, x, g, b, training, momentum, eps, N, CH, IH,
                                       IW);
    Py_END_ALLOW_THREADS
    if (st == PEFTC_ERR_NONFINITE) {
        PyErr_Format(PyExc_ValueError,
                     "%s: running_var holds a negative or non-finite value, or running_mean a non-finite one", fn);
        return NULL;
    }
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_batchnorm2d_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return bn_forward_py(args, BN_PLAIN);
}

static PyObject *py_batchnorm2d_relu_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return bn_forward_py(args, BN_RELU);
}

static PyObject *py_batchnorm2d_add_relu_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return bn_forward_py(args, BN_ADD_RELU);
}

/* batchnorm2d_backward (dx, dweight, dbias, dy, x, ...) and batchnorm2d_relu_backward, which also takes
 * the forward's output y after dy */
static PyObject *bn_backward_py(PyObject *args, int relu)
{
    PyObject *o_dx, *o_dg, *o_db, *o_dy, *o_x, *o_mean, *o_rstd, *o_g;
    PyObject *o_y = Py_None, *o_scale = Py_None, *o_shift = Py_None;
    int training, overwrite_dx = 0, ok;
    if (relu)
        ok = PyArg_ParseTuple(args, "OOOOOOOOOp|pOO:batchnorm2d_relu_backward", &o_dx, &o_dg, &o_db, &o_dy, &o_y, &o_x,
                              &o_mean, &o_rstd, &o_g, &training, &overwrite_dx, &o_scale, &o_shift);
    else
        ok = PyArg_ParseTuple(args, "OOOOOOOOp|p:batchnorm2d_backward", &o_dx, &o_dg, &o_db, &o_dy, &o_x, &o_mean,
                              &o_rstd, &o_g, &training, &overwrite_dx);
    if (!ok)
        return NULL;
    ARG_CHECK(ck, relu ? "batchnorm2d_relu_backward" : "batchnorm2d_backward");
    float *dx, *dg, *db, *dy, *y = NULL, *x, *mean, *rstd, *g, *scale = NULL, *shift = NULL;
    if (arg_f32(&ck, "dx", o_dx, "N CH IH IW", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dweight", o_dg, "CH", ARG_OUT | ARG_OPTIONAL, &dg) < 0 ||
        arg_f32(&ck, "dbias", o_db, "CH", ARG_OUT | ARG_OPTIONAL, &db) < 0 ||
        arg_f32(&ck, "dy", o_dy, "N CH IH IW", ARG_IN, &dy) < 0 ||
        (relu && arg_f32(&ck, "y", o_y, "N CH IH IW", ARG_IN | (o_scale != Py_None ? ARG_OPTIONAL : 0), &y) < 0) ||
        (relu && arg_f32(&ck, "scale", o_scale, "CH", ARG_IN | (o_y != Py_None ? ARG_OPTIONAL : 0), &scale) < 0) ||
        (relu && arg_f32(&ck, "shift", o_shift, "CH", ARG_IN | (o_scale == Py_None ? ARG_OPTIONAL : 0), &shift) < 0) ||
        arg_f32(&ck, "x", o_x, "N CH IH IW", ARG_IN, &x) < 0 || arg_f32(&ck, "mean", o_mean, "CH", ARG_IN, &mean) < 0 ||
        arg_f32(&ck, "rstd", o_rstd, "CH", ARG_IN, &rstd) < 0 ||
        arg_f32(&ck, "weight", o_g, "CH", ARG_OPTIONAL, &g) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (y && scale) {
        PyErr_Format(PyExc_ValueError, "%s: give the forward's output y or its map (scale, shift), not both", ck.fn);
        return NULL;
    }
    const int64_t N = arg_dim(&ck, "N"), CH = arg_dim(&ck, "CH"), IH = arg_dim(&ck, "IH"), IW = arg_dim(&ck, "IW");
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = relu ? peftc_batchnorm2d_relu_backward(dx, dg, db, dy, y, scale, shift, x, mean, rstd, g, training,
                                                overwrite_dx, N, CH, IH, IW)
              : peftc_batchnorm2d_backward(dx, dg, db, dy, x, mean, rstd, g, training, overwrite_dx, N, CH, IH, IW);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_batchnorm2d_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return bn_backward_py(args, 0);
}

static PyObject *py_batchnorm2d_relu_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return bn_backward_py(args, 1);
}

static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_am, *o_x;
    long long KH, KW, SH, SW, PH, PW;
    if (!PyArg_ParseTuple(args, "OOOLLLLLL:maxpool2d_forward", &o_y, &o_am, &o_x, &KH, &KW, &SH, &SW, &PH, &PW))
        return NULL;
    ARG_CHECK(ck, "maxpool2d_forward");
    float *y, *x;
    int64_t *am;
    if (arg_f32(&ck, "y", o_y, "N CH OH OW", ARG_OUT, &y) < 0 ||
        arg_i64(&ck, "argmax", o_am, "N CH OH OW", ARG_OUT, &am) < 0 ||
        arg_f32(&ck, "x", o_x, "N CH IH IW", ARG_IN, &x) < 0 || arg_no_alias(&ck) < 0 ||
        bind_window(&ck, KH, KW, SH, SW, PH, PW, 1) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_maxpool2d_forward(y, am, x, arg_dim(&ck, "N"), arg_dim(&ck, "CH"), arg_dim(&ck, "IH"),
                                 arg_dim(&ck, "IW"), KH, KW, SH, SW, PH, PW);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dy, *o_am;
    if (!PyArg_ParseTuple(args, "OOO:maxpool2d_backward", &o_dx, &o_dy, &o_am))
        return NULL;
    ARG_CHECK(ck, "maxpool2d_backward");
    float *dx, *dy;
    int64_t *am;
    if (arg_f32(&ck, "dx", o_dx, "N CH IH IW", ARG_OUT, &dx) < 0 ||
        arg_f32(&ck, "dy", o_dy, "N CH OH OW", ARG_IN, &dy) < 0 ||
        arg_i64(&ck, "argmax", o_am, "N CH OH OW", ARG_IN, &am) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_maxpool2d_backward(dx, dy, am, arg_dim(&ck, "N"), arg_dim(&ck, "CH"), arg_dim(&ck, "IH"),
                                  arg_dim(&ck, "IW"), arg_dim(&ck, "OH"), arg_dim(&ck, "OW"));
    Py_END_ALLOW_THREADS
    if (st == PEFTC_ERR_ARG) {
        PyErr_SetString(PyExc_ValueError, "maxpool2d_backward: 'argmax' holds an index outside the (IH, IW) plane");
        return NULL;
    }
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_avgpool2d_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_x;
    long long KH, KW, SH, SW, PH, PW;
    if (!PyArg_ParseTuple(args, "OOLLLLLL:avgpool2d_forward", &o_y, &o_x, &KH, &KW, &SH, &SW, &PH, &PW))
        return NULL;
    ARG_CHECK(ck, "avgpool2d_forward");
    float *y, *x;
    if (arg_f32(&ck, "y", o_y, "N CH OH OW", ARG_OUT, &y) < 0 || arg_f32(&ck, "x", o_x, "N CH IH IW", ARG_IN, &x) < 0 ||
        arg_no_alias(&ck) < 0 || bind_window(&ck, KH, KW, SH, SW, PH, PW, 1) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_avgpool2d_forward(y, x, arg_dim(&ck, "N"), arg_dim(&ck, "CH"), arg_dim(&ck, "IH"), arg_dim(&ck, "IW"),
                                 KH, KW, SH, SW, PH, PW);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_avgpool2d_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dy;
    long long KH, KW, SH, SW, PH, PW;
    if (!PyArg_ParseTuple(args, "OOLLLLLL:avgpool2d_backward", &o_dx, &o_dy, &KH, &KW, &SH, &SW, &PH, &PW))
        return NULL;
    ARG_CHECK(ck, "avgpool2d_backward");
    float *dx, *dy;
    if (arg_f32(&ck, "dx", o_dx, "N CH IH IW", ARG_OUT, &dx) < 0 ||
        arg_f32(&ck, "dy", o_dy, "N CH OH OW", ARG_IN, &dy) < 0 || arg_no_alias(&ck) < 0 ||
        bind_window(&ck, KH, KW, SH, SW, PH, PW, 1) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_avgpool2d_backward(dx, dy, arg_dim(&ck, "N"), arg_dim(&ck, "CH"), arg_dim(&ck, "IH"), arg_dim(&ck, "IW"),
                                  KH, KW, SH, SW, PH, PW);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_global_avgpool2d(PyObject *args, int backward)
{
    const char *fn = backward ? "global_avgpool2d_backward" : "global_avgpool2d_forward";
    PyObject *o_out, *o_in;
    if (!PyArg_ParseTuple(args, backward ? "OO:global_avgpool2d_backward" : "OO:global_avgpool2d_forward", &o_out,
                          &o_in))
        return NULL;
    ARG_CHECK(ck, fn);
    float *out, *in;
    if (arg_f32(&ck, backward ? "dx" : "y", o_out, backward ? "N CH IH IW" : "N CH", ARG_OUT, &out) < 0 ||
        arg_f32(&ck, backward ? "dy" : "x", o_in, backward ? "N CH" : "N CH IH IW", ARG_IN, &in) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), CH = arg_dim(&ck, "CH"), IH = arg_dim(&ck, "IH"), IW = arg_dim(&ck, "IW");
    if (IH == 0 || IW == 0) {
        PyErr_Format(PyExc_ValueError, "%s: the image plane is empty (IH=%lld, IW=%lld)", fn, (long long)IH,
                     (long long)IW);
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = backward ? peftc_global_avgpool2d_backward(out, in, N, CH, IH, IW)
                  : peftc_global_avgpool2d_forward(out, in, N, CH, IH, IW);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_global_avgpool2d_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_global_avgpool2d(args, 0);
}

static PyObject *py_global_avgpool2d_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_global_avgpool2d(args, 1);
}

static PyObject *py_relu_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_x;
    if (!PyArg_ParseTuple(args, "OO:relu_forward", &o_y, &o_x))
        return NULL;
    ARG_CHECK(ck, "relu_forward");
    float *y, *x;
    if (arg_f32(&ck, "y", o_y, "*", ARG_OUT, &y) < 0 || arg_f32(&ck, "x", o_x, "*", ARG_IN, &x) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_relu_forward(y, x, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dy, *o_x;
    if (!PyArg_ParseTuple(args, "OOO:relu_backward", &o_dx, &o_dy, &o_x))
        return NULL;
    ARG_CHECK(ck, "relu_backward");
    float *dx, *dy, *x;
    if (arg_f32(&ck, "dx", o_dx, "*", ARG_OUT, &dx) < 0 || arg_f32(&ck, "dy", o_dy, "*", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "x", o_x, "*", ARG_IN, &x) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_relu_backward(dx, dy, x, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_cnn_methods[] = {
    {"conv2d_workspace_size", py_conv2d_workspace_size, METH_VARARGS,
     "conv2d_workspace_size(N, IC, IH, IW, OC, KH, KW, SH, SW, PH, PW) -> floats of scratch conv2d_forward/backward "
     "need"},
    {"conv2d_forward", py_conv2d_forward, METH_VARARGS,
     "conv2d_forward(y, work, x, weight, bias, SH, SW, PH, PW): y = conv(x, weight) + bias"},
    {"conv2d_backward", py_conv2d_backward, METH_VARARGS,
     "conv2d_backward(dx, dweight, dbias, work, dy, x, weight, SH, SW, PH, PW, overwrite_dx=False): accumulate (None = "
     "not wanted; dx overwritten with overwrite_dx)"},
    {"batchnorm2d_forward", py_batchnorm2d_forward, METH_VARARGS,
     "batchnorm2d_forward(y, mean, rstd, running_mean, running_var, x, weight, bias, training, momentum, eps, "
     "scale=None, shift=None): y None computes the statistics (and map) only"},
    {"batchnorm2d_add_relu_forward", py_batchnorm2d_add_relu_forward, METH_VARARGS,
     "batchnorm2d_add_relu_forward(y, mean, rstd, running_mean, running_var, x, weight, bias, residual, res_mean, "
     "res_scale, res_shift, training, momentum, eps): y = max(batchnorm(x) + residual (mapped), 0)"},
    {"batchnorm2d_backward", py_batchnorm2d_backward, METH_VARARGS,
     "batchnorm2d_backward(dx, dweight, dbias, dy, x, mean, rstd, weight, training, overwrite_dx=False): accumulate"},
    {"batchnorm2d_relu_forward", py_batchnorm2d_relu_forward, METH_VARARGS,
     "batchnorm2d_relu_forward(y, mean, rstd, running_mean, running_var, x, weight, bias, training, momentum, eps, "
     "scale=None, shift=None): "
     "y = max(batchnorm(x), 0)"},
    {"batchnorm2d_relu_backward", py_batchnorm2d_relu_backward, METH_VARARGS,
     "batchnorm2d_relu_backward(dx, dweight, dbias, dy, y, x, mean, rstd, weight, training, overwrite_dx=False, "
     "scale=None, shift=None): y None with the forward's map scale, shift; "
     "accumulate"},
    {"maxpool2d_forward", py_maxpool2d_forward, METH_VARARGS,
     "maxpool2d_forward(y, argmax, x, KH, KW, SH, SW, PH, PW)"},
    {"maxpool2d_backward", py_maxpool2d_backward, METH_VARARGS, "maxpool2d_backward(dx, dy, argmax): accumulate"},
    {"avgpool2d_forward", py_avgpool2d_forward, METH_VARARGS, "avgpool2d_forward(y, x, KH, KW, SH, SW, PH, PW)"},
    {"avgpool2d_backward", py_avgpool2d_backward, METH_VARARGS,
     "avgpool2d_backward(dx, dy, KH, KW, SH, SW, PH, PW): accumulate"},
    {"global_avgpool2d_forward", py_global_avgpool2d_forward, METH_VARARGS, "global_avgpool2d_forward(y, x)"},
    {"global_avgpool2d_backward", py_global_avgpool2d_backward, METH_VARARGS,
     "global_avgpool2d_backward(dx, dy): accumulate"},
    {"relu_forward", py_relu_forward, METH_VARARGS, "relu_forward(y, x): y = max(x, 0)"},
    {"relu_backward", py_relu_backward, METH_VARARGS, "relu_backward(dx, dy, x): dx += dy where x > 0"},
    {NULL, NULL, 0, NULL},
};
