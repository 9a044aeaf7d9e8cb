/* py_optim.c: Python entry points for the optimizers and training loss section of peftc.h: softmax
 * cross-entropy (loss.c), the optimizer steps and gradient-norm helpers (optim.c), and the threaded
 * fill that zeroes gradient buffers (fill.c). The entropy that test-time adaptation minimises is in
 * py_tta.c. */
#include "args.h"

static PyObject *py_cross_entropy_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_probs, *o_logits, *o_labels;
    long long ignore_index;
    if (!PyArg_ParseTuple(args, "OOOL:cross_entropy_forward", &o_probs, &o_logits, &o_labels, &ignore_index))
        return NULL;
    ARG_CHECK(ck, "cross_entropy_forward");
    float *probs, *logits;
    int64_t *labels;
    if (arg_f32(&ck, "probs", o_probs, "N C", ARG_OUT, &probs) < 0 ||
        arg_f32(&ck, "logits", o_logits, "N C", ARG_IN, &logits) < 0 ||
        arg_i64(&ck, "labels", o_labels, "N", ARG_IN, &labels) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    float loss = 0.0f;
    int64_t count = 0;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_cross_entropy_forward(&loss, &count, probs, logits, labels, ignore_index, arg_dim(&ck, "N"),
                                     arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return Py_BuildValue("(dL)", (double)loss, (long long)count);
}

static PyObject *py_cross_entropy_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dlogits, *o_probs, *o_labels;
    float dloss;
    long long ignore_index;
    if (!PyArg_ParseTuple(args, "OfOOL:cross_entropy_backward", &o_dlogits, &dloss, &o_probs, &o_labels, &ignore_index))
        return NULL;
    ARG_CHECK(ck, "cross_entropy_backward");
    float *dlogits, *probs;
    int64_t *labels;
    if (arg_f32(&ck, "dlogits", o_dlogits, "N C", ARG_OUT, &dlogits) < 0 ||
        arg_f32(&ck, "probs", o_probs, "N C", ARG_IN, &probs) < 0 ||
        arg_i64(&ck, "labels", o_labels, "N", ARG_IN, &labels) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st =
        peftc_cross_entropy_backward(dlogits, dloss, probs, labels, ignore_index, arg_dim(&ck, "N"), arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_adamw_step(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_param, *o_m, *o_v, *o_grad;
    double lr, beta1, beta2, eps, wd;
    long long step;
    if (!PyArg_ParseTuple(args, "OOOOdddddL:adamw_step", &o_param, &o_m, &o_v, &o_grad, &lr, &beta1, &beta2, &eps, &wd,
                          &step))
        return NULL;
    ARG_CHECK(ck, "adamw_step");
    float *param, *m, *v, *grad;
    if (arg_f32(&ck, "param", o_param, "*", ARG_OUT, &param) < 0 || arg_f32(&ck, "m", o_m, "*", ARG_OUT, &m) < 0 ||
        arg_f32(&ck, "v", o_v, "*", ARG_OUT, &v) < 0 || arg_f32(&ck, "grad", o_grad, "*", ARG_IN, &grad) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    if (step < 1 || !(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0) || !(eps >= 0.0)) {
        PyErr_Format(PyExc_ValueError, "adamw_step: needs step >= 1, betas in [0, 1) and eps >= 0 (step=%lld)", step);
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_adamw_step(param, m, v, grad, lr, beta1, beta2, eps, wd, step, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_sgd_step(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_param, *o_buf, *o_grad;
    float lr, momentum, dampening, wd;
    int nesterov;
    long long step;
    if (!PyArg_ParseTuple(args, "OOOffffpL:sgd_step", &o_param, &o_buf, &o_grad, &lr, &momentum, &dampening, &wd,
                          &nesterov, &step))
        return NULL;
    ARG_CHECK(ck, "sgd_step");
    float *param, *buf, *grad;
    if (arg_f32(&ck, "param", o_param, "*", ARG_OUT, &param) < 0 ||
        arg_f32(&ck, "momentum_buffer", o_buf, "*", ARG_OUT | ARG_OPTIONAL, &buf) < 0 ||
        arg_f32(&ck, "grad", o_grad, "*", ARG_IN, &grad) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (step < 1 || (momentum != 0.0f && !buf) || (nesterov && (momentum <= 0.0f || dampening != 0.0f))) {
        PyErr_SetString(PyExc_ValueError, "sgd_step: needs step >= 1, a momentum_buffer when momentum != 0, and "
                                          "momentum > 0 with dampening 0 for nesterov");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_sgd_step(param, buf, grad, lr, momentum, dampening, wd, nesterov, step, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_sumsq(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_x;
    if (!PyArg_ParseTuple(args, "O:sumsq", &o_x))
        return NULL;
    ARG_CHECK(ck, "sumsq");
    float *x;
    if (arg_f32(&ck, "x", o_x, "*", ARG_IN, &x) < 0)
        return NULL;
    double out = 0.0;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_sumsq(&out, x, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return PyFloat_FromDouble(out);
}

/* the wrappers of the kernels that take one flat array, updated, and one float: scale_inplace, fill */
static PyObject *flat_scalar_call(PyObject *args, const char *format, const char *fn,
                                  peftc_status (*kernel)(float *, float, int64_t))
{
    PyObject *o_x;
    float value;
    if (!PyArg_ParseTuple(args, format, &o_x, &value))
        return NULL;
    ARG_CHECK(ck, fn);
    float *x;
    if (arg_f32(&ck, "x", o_x, "*", ARG_OUT, &x) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kernel(x, value, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_scale_inplace(PyObject *self, PyObject *args)
{
    (void)self;
    return flat_scalar_call(args, "Of:scale_inplace", "scale_inplace", peftc_scale_inplace);
}

static PyObject *py_fill(PyObject *self, PyObject *args)
{
    (void)self;
    return flat_scalar_call(args, "Of:fill", "fill", peftc_fill);
}

PyMethodDef peftc_py_optim_methods[] = {
    {"cross_entropy_forward", py_cross_entropy_forward, METH_VARARGS,
     "cross_entropy_forward(probs, logits, labels, ignore_index) -> (loss, count)"},
    {"cross_entropy_backward", py_cross_entropy_backward, METH_VARARGS,
     "cross_entropy_backward(dlogits, dloss, probs, labels, ignore_index): dlogits +="},
    {"adamw_step", py_adamw_step, METH_VARARGS,
     "adamw_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step)"},
    {"sgd_step", py_sgd_step, METH_VARARGS,
     "sgd_step(param, momentum_buffer, grad, lr, momentum, dampening, weight_decay, nesterov, step)"},
    {"sumsq", py_sumsq, METH_VARARGS, "sumsq(x) -> sum of squares, accumulated in double"},
    {"scale_inplace", py_scale_inplace, METH_VARARGS, "scale_inplace(x, alpha): x *= alpha"},
    {"fill", py_fill, METH_VARARGS, "fill(x, value): x = value everywhere"},
    {NULL, NULL, 0, NULL},
};
