/* py_fscil.c: wrappers of the few-shot class-incremental learning losses (fscil.c), the FSCIL section of
 * peftc.h: SupCon and the alignment to pre-assigned prototypes. Parse, validate, release the GIL, call,
 * map the status; no math here. */
#include <math.h>

#include "args.h"

static int check_temperature(const char *fn, float temperature)
{
    if (temperature > 0.0f && isfinite(temperature))
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: temperature must be a finite number > 0, got %g", fn, (double)temperature);
    return -1;
}

static PyObject *py_supcon_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_probs, *o_z, *o_labels;
    float temperature;
    if (!PyArg_ParseTuple(args, "OOOf:supcon_forward", &o_probs, &o_z, &o_labels, &temperature))
        return NULL;
    ARG_CHECK(ck, "supcon_forward");
    float *probs, *z;
    int64_t *labels;
    if (arg_f32(&ck, "probs", o_probs, "N N", ARG_OUT, &probs) < 0 || arg_f32(&ck, "z", o_z, "N H", ARG_IN, &z) < 0 ||
        arg_i64(&ck, "labels", o_labels, "N", ARG_IN, &labels) < 0 || arg_no_alias(&ck) < 0 ||
        check_temperature(ck.fn, temperature) < 0)
        return NULL;
    float loss = 0.0f;
    int64_t anchors = 0;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_supcon_forward(&loss, &anchors, probs, z, labels, temperature, arg_dim(&ck, "N"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return Py_BuildValue("(dL)", (double)loss, (long long)anchors);
}

static PyObject *py_supcon_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dz, *o_work, *o_probs, *o_z, *o_labels;
    float dloss, temperature;
    if (!PyArg_ParseTuple(args, "OOfOOOf:supcon_backward", &o_dz, &o_work, &dloss, &o_probs, &o_z, &o_labels,
                          &temperature))
        return NULL;
    ARG_CHECK(ck, "supcon_backward");
    float *dz, *work, *probs, *z;
    int64_t *labels;
    if (arg_f32(&ck, "dz", o_dz, "N H", ARG_OUT, &dz) < 0 || arg_f32(&ck, "work", o_work, "N N", ARG_OUT, &work) < 0 ||
        arg_f32(&ck, "probs", o_probs, "N N", ARG_IN, &probs) < 0 || arg_f32(&ck, "z", o_z, "N H", ARG_IN, &z) < 0 ||
        arg_i64(&ck, "labels", o_labels, "N", ARG_IN, &labels) < 0 || arg_no_alias(&ck) < 0 ||
        check_temperature(ck.fn, temperature) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_supcon_backward(dz, work, dloss, probs, z, labels, temperature, arg_dim(&ck, "N"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_etf_align_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dots, *o_feat, *o_targets, *o_labels;
    long long ignore_index;
    if (!PyArg_ParseTuple(args, "OOOOL:etf_align_forward", &o_dots, &o_feat, &o_targets, &o_labels, &ignore_index))
        return NULL;
    ARG_CHECK(ck, "etf_align_forward");
    float *dots, *feat, *targets;
    int64_t *labels;
    if (arg_f32(&ck, "dots", o_dots, "N", ARG_OUT, &dots) < 0 ||
        arg_f32(&ck, "feat", o_feat, "N H", ARG_IN, &feat) < 0 ||
        arg_f32(&ck, "targets", o_targets, "K H", ARG_IN, &targets) < 0 ||
        arg_i64(&ck, "labels", o_labels, "N", ARG_IN, &labels) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    float loss = 0.0f;
    int64_t count = 0;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_etf_align_forward(&loss, &count, dots, feat, targets, labels, (int64_t)ignore_index, arg_dim(&ck, "N"),
                                 arg_dim(&ck, "H"), arg_dim(&ck, "K"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return Py_BuildValue("(dL)", (double)loss, (long long)count);
}

static PyObject *py_etf_align_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dfeat, *o_dots, *o_targets, *o_labels;
    float dloss;
    long long ignore_index;
    if (!PyArg_ParseTuple(args, "OfOOOL:etf_align_backward", &o_dfeat, &dloss, &o_dots, &o_targets, &o_labels,
                          &ignore_index))
        return NULL;
    ARG_CHECK(ck, "etf_align_backward");
    float *dfeat, *dots, *targets;
    int64_t *labels;
    if (arg_f32(&ck, "dfeat", o_dfeat, "N H", ARG_OUT, &dfeat) < 0 ||
        arg_f32(&ck, "dots", o_dots, "N", ARG_IN, &dots) < 0 ||
        arg_f32(&ck, "targets", o_targets, "K H", ARG_IN, &targets) < 0 ||
        arg_i64(&ck, "labels", o_labels, "N", ARG_IN, &labels) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_etf_align_backward(dfeat, dloss, dots, targets, labels, (int64_t)ignore_index, arg_dim(&ck, "N"),
                                  arg_dim(&ck, "H"), arg_dim(&ck, "K"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_fscil_methods[] = {
    {"supcon_forward", py_supcon_forward, METH_VARARGS,
     "supcon_forward(probs, z, labels, temperature) -> (loss, anchors)"},
    {"supcon_backward", py_supcon_backward, METH_VARARGS,
     "supcon_backward(dz, work, dloss, probs, z, labels, temperature): dz += dloss * dL/dz"},
    {"etf_align_forward", py_etf_align_forward, METH_VARARGS,
     "etf_align_forward(dots, feat, targets, labels, ignore_index) -> (loss, count)"},
    {"etf_align_backward", py_etf_align_backward, METH_VARARGS,
     "etf_align_backward(dfeat, dloss, dots, targets, labels, ignore_index): dfeat += dloss * dL/dfeat"},
    {NULL, NULL, 0, NULL},
};
