/* py_tta.c: wrappers of the test-time adaptation kernels (tta.c), the TTA section of peftc.h: softmax
 * entropy and EATA's sample selection. Parse, validate, release the GIL, call, map the status; no math
 * here. The supervised cross-entropy on the same logits is in py_optim.c. */
#include "args.h"

static PyObject *py_softmax_entropy_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_ent, *o_probs, *o_logits;
    if (!PyArg_ParseTuple(args, "OOO:softmax_entropy_forward", &o_ent, &o_probs, &o_logits))
        return NULL;
    ARG_CHECK(ck, "softmax_entropy_forward");
    float *ent, *probs, *logits;
    if (arg_f32(&ck, "ent", o_ent, "N", ARG_OUT, &ent) < 0 ||
        arg_f32(&ck, "probs", o_probs, "N C", ARG_OUT, &probs) < 0 ||
        arg_f32(&ck, "logits", o_logits, "N C", ARG_IN, &logits) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_softmax_entropy_forward(ent, probs, logits, arg_dim(&ck, "N"), arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_softmax_entropy_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dlogits, *o_dent, *o_probs, *o_logits;
    if (!PyArg_ParseTuple(args, "OOOO:softmax_entropy_backward", &o_dlogits, &o_dent, &o_probs, &o_logits))
        return NULL;
    ARG_CHECK(ck, "softmax_entropy_backward");
    float *dlogits, *dent, *probs, *logits;
    if (arg_f32(&ck, "dlogits", o_dlogits, "N C", ARG_OUT, &dlogits) < 0 ||
        arg_f32(&ck, "dent", o_dent, "N", ARG_IN, &dent) < 0 ||
        arg_f32(&ck, "probs", o_probs, "N C", ARG_IN, &probs) < 0 ||
        arg_f32(&ck, "logits", o_logits, "N C", ARG_IN, &logits) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_softmax_entropy_backward(dlogits, dent, probs, logits, arg_dim(&ck, "N"), arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_eata_select(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_weight, *o_ema, *o_ent, *o_probs;
    int ema_set_in;
    float e0, d_margin, momentum;
    if (!PyArg_ParseTuple(args, "OOpOOfff:eata_select", &o_weight, &o_ema, &ema_set_in, &o_ent, &o_probs, &e0,
                          &d_margin, &momentum))
        return NULL;
    ARG_CHECK(ck, "eata_select");
    float *weight, *ema, *ent, *probs;
    if (arg_f32(&ck, "weight", o_weight, "N", ARG_OUT, &weight) < 0 ||
        arg_f32(&ck, "ema", o_ema, "C", ARG_OUT, &ema) < 0 || arg_f32(&ck, "ent", o_ent, "N", ARG_IN, &ent) < 0 ||
        arg_f32(&ck, "probs", o_probs, "N C", ARG_IN, &probs) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (!(momentum >= 0.0f && momentum <= 1.0f) || !(d_margin >= 0.0f) || !isfinite(e0)) {
        PyErr_Format(PyExc_ValueError,
                     "eata_select: needs momentum in [0, 1], d_margin >= 0 and a finite e0 "
                     "(got momentum=%g, d_margin=%g, e0=%g)",
                     (double)momentum, (double)d_margin, (double)e0);
        return NULL;
    }
    int64_t counts[2] = {0, 0};
    int64_t ema_set = ema_set_in;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_eata_select(weight, counts, ema, &ema_set, ent, probs, e0, d_margin, momentum, arg_dim(&ck, "N"),
                           arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return Py_BuildValue("(LLO)", (long long)counts[0], (long long)counts[1], ema_set ? Py_True : Py_False);
}

PyMethodDef peftc_py_tta_methods[] = {
    {"softmax_entropy_forward", py_softmax_entropy_forward, METH_VARARGS,
     "softmax_entropy_forward(ent, probs, logits): per-row entropy and softmax"},
    {"softmax_entropy_backward", py_softmax_entropy_backward, METH_VARARGS,
     "softmax_entropy_backward(dlogits, dent, probs, logits): dlogits += dent * dH/dlogits"},
    {"eata_select", py_eata_select, METH_VARARGS,
     "eata_select(weight, ema, ema_set, ent, probs, e0, d_margin, momentum) -> (reliable, selected, ema_set)"},
    {NULL, NULL, 0, NULL},
};
