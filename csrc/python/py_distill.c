/* py_distill.c: wrappers of the data-free distillation losses (distill.c), the distillation section of
 * peftc.h: the KD divergence, ADI's Jensen-Shannon competition term, BatchNorm-statistics matching, DAFL's
 * activation and entropy terms, total variation. Parse, validate, release the GIL, call, map the status; no
 * math here. Forwards return the scalar loss(es) as Python floats. */
#include "args.h"

static int check_tau(const char *fn, float tau)
{
    if (tau > 0.0f && isfinite(tau))
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: tau must be a finite temperature > 0, got %g", fn, (double)tau);
    return -1;
}

/* The two divergences of a student and a teacher distribution share one forward signature. */
typedef peftc_status (*pair_loss_forward)(float *, float *, float *, const float *, const float *, float, int64_t,
                                          int64_t);

static PyObject *pair_forward(PyObject *args, const char *format, const char *fn, pair_loss_forward kernel)
{
    PyObject *o_ps, *o_pt, *o_zs, *o_zt;
    float tau;
    if (!PyArg_ParseTuple(args, format, &o_ps, &o_pt, &o_zs, &o_zt, &tau))
        return NULL;
    ARG_CHECK(ck, fn);
    float *ps, *pt, *zs, *zt;
    if (arg_f32(&ck, "student_probs", o_ps, "N C", ARG_OUT, &ps) < 0 ||
        arg_f32(&ck, "teacher_probs", o_pt, "N C", ARG_OUT, &pt) < 0 ||
        arg_f32(&ck, "student_logits", o_zs, "N C", ARG_IN, &zs) < 0 ||
        arg_f32(&ck, "teacher_logits", o_zt, "N C", ARG_IN, &zt) < 0 || arg_no_alias(&ck) < 0 ||
        check_tau(ck.fn, tau) < 0)
        return NULL;
    float loss = 0.0f;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kernel(&loss, ps, pt, zs, zt, tau, arg_dim(&ck, "N"), arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return PyFloat_FromDouble((double)loss);
}

static PyObject *py_kd_kl_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return pair_forward(args, "OOOOf:kd_kl_forward", "kd_kl_forward", peftc_kd_kl_forward);
}

static PyObject *py_kd_kl_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dzs, *o_dzt, *o_ps, *o_pt, *o_zs, *o_zt;
    float dloss, tau;
    if (!PyArg_ParseTuple(args, "OOfOOOOf:kd_kl_backward", &o_dzs, &o_dzt, &dloss, &o_ps, &o_pt, &o_zs, &o_zt, &tau))
        return NULL;
    ARG_CHECK(ck, "kd_kl_backward");
    float *dzs, *dzt, *ps, *pt, *zs, *zt;
    if (arg_f32(&ck, "dstudent_logits", o_dzs, "N C", ARG_OUT | ARG_OPTIONAL, &dzs) < 0 ||
        arg_f32(&ck, "dteacher_logits", o_dzt, "N C", ARG_OUT | ARG_OPTIONAL, &dzt) < 0 ||
        arg_f32(&ck, "student_probs", o_ps, "N C", ARG_IN, &ps) < 0 ||
        arg_f32(&ck, "teacher_probs", o_pt, "N C", ARG_IN, &pt) < 0 ||
        arg_f32(&ck, "student_logits", o_zs, "N C", ARG_IN, &zs) < 0 ||
        arg_f32(&ck, "teacher_logits", o_zt, "N C", ARG_IN, &zt) < 0 || arg_no_alias(&ck) < 0 ||
        check_tau(ck.fn, tau) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_kd_kl_backward(dzs, dzt, dloss, ps, pt, zs, zt, tau, arg_dim(&ck, "N"), arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_adi_js_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return pair_forward(args, "OOOOf:adi_js_forward", "adi_js_forward", peftc_adi_js_forward);
}

static PyObject *py_adi_js_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dzs, *o_dzt, *o_ps, *o_pt;
    float dloss, tau;
    if (!PyArg_ParseTuple(args, "OOfOOf:adi_js_backward", &o_dzs, &o_dzt, &dloss, &o_ps, &o_pt, &tau))
        return NULL;
    ARG_CHECK(ck, "adi_js_backward");
    float *dzs, *dzt, *ps, *pt;
    if (arg_f32(&ck, "dstudent_logits", o_dzs, "N C", ARG_OUT | ARG_OPTIONAL, &dzs) < 0 ||
        arg_f32(&ck, "dteacher_logits", o_dzt, "N C", ARG_OUT | ARG_OPTIONAL, &dzt) < 0 ||
        arg_f32(&ck, "student_probs", o_ps, "N C", ARG_IN, &ps) < 0 ||
        arg_f32(&ck, "teacher_probs", o_pt, "N C", ARG_IN, &pt) < 0 || arg_no_alias(&ck) < 0 ||
        check_tau(ck.fn, tau) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_adi_js_backward(dzs, dzt, dloss, ps, pt, tau, arg_dim(&ck, "N"), arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_bn_stat_match_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_mean, *o_var, *o_x, *o_rm, *o_rv;
    if (!PyArg_ParseTuple(args, "OOOOO:bn_stat_match_forward", &o_mean, &o_var, &o_x, &o_rm, &o_rv))
        return NULL;
    ARG_CHECK(ck, "bn_stat_match_forward");
    float *mean, *var, *x, *rm, *rv;
    if (arg_f32(&ck, "mean", o_mean, "CH", ARG_OUT, &mean) < 0 || arg_f32(&ck, "var", o_var, "CH", ARG_OUT, &var) < 0 ||
        arg_f32(&ck, "x", o_x, "N CH IH IW", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "running_mean", o_rm, "CH", ARG_IN, &rm) < 0 ||
        arg_f32(&ck, "running_var", o_rv, "CH", ARG_IN, &rv) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    float loss = 0.0f;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bn_stat_match_forward(&loss, mean, var, x, rm, rv, arg_dim(&ck, "N"), arg_dim(&ck, "CH"),
                                     arg_dim(&ck, "IH"), arg_dim(&ck, "IW"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return PyFloat_FromDouble((double)loss);
}

static PyObject *py_bn_stat_match_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_x, *o_mean, *o_var, *o_rm, *o_rv;
    float dloss;
    if (!PyArg_ParseTuple(args, "OfOOOOO:bn_stat_match_backward", &o_dx, &dloss, &o_x, &o_mean, &o_var, &o_rm, &o_rv))
        return NULL;
    ARG_CHECK(ck, "bn_stat_match_backward");
    float *dx, *x, *mean, *var, *rm, *rv;
    if (arg_f32(&ck, "dx", o_dx, "N CH IH IW", ARG_OUT, &dx) < 0 ||
        arg_f32(&ck, "x", o_x, "N CH IH IW", ARG_IN, &x) < 0 || arg_f32(&ck, "mean", o_mean, "CH", ARG_IN, &mean) < 0 ||
        arg_f32(&ck, "var", o_var, "CH", ARG_IN, &var) < 0 ||
        arg_f32(&ck, "running_mean", o_rm, "CH", ARG_IN, &rm) < 0 ||
        arg_f32(&ck, "running_var", o_rv, "CH", ARG_IN, &rv) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bn_stat_match_backward(dx, dloss, x, mean, var, rm, rv, arg_dim(&ck, "N"), arg_dim(&ck, "CH"),
                                      arg_dim(&ck, "IH"), arg_dim(&ck, "IW"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_dafl_activation_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_f;
    if (!PyArg_ParseTuple(args, "O:dafl_activation_forward", &o_f))
        return NULL;
    ARG_CHECK(ck, "dafl_activation_forward");
    float *f;
    if (arg_f32(&ck, "features", o_f, "*", ARG_IN, &f) < 0)
        return NULL;
    float loss = 0.0f;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_dafl_activation_forward(&loss, f, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return PyFloat_FromDouble((double)loss);
}

static PyObject *py_dafl_activation_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_df, *o_f;
    float dloss;
    if (!PyArg_ParseTuple(args, "OfO:dafl_activation_backward", &o_df, &dloss, &o_f))
        return NULL;
    ARG_CHECK(ck, "dafl_activation_backward");
    float *df, *f;
    if (arg_f32(&ck, "dfeatures", o_df, "*", ARG_OUT, &df) < 0 || arg_f32(&ck, "features", o_f, "*", ARG_IN, &f) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_dafl_activation_backward(df, dloss, f, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_dafl_entropy_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_probs, *o_pbar, *o_logits;
    if (!PyArg_ParseTuple(args, "OOO:dafl_entropy_forward", &o_probs, &o_pbar, &o_logits))
        return NULL;
    ARG_CHECK(ck, "dafl_entropy_forward");
    float *probs, *pbar, *logits;
    if (arg_f32(&ck, "probs", o_probs, "N C", ARG_OUT, &probs) < 0 ||
        arg_f32(&ck, "mean_probs", o_pbar, "C", ARG_OUT, &pbar) < 0 ||
        arg_f32(&ck, "logits", o_logits, "N C", ARG_IN, &logits) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    float loss = 0.0f;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_dafl_entropy_forward(&loss, probs, pbar, logits, arg_dim(&ck, "N"), arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return PyFloat_FromDouble((double)loss);
}

static PyObject *py_dafl_entropy_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dlogits, *o_probs, *o_pbar;
    float dloss;
    if (!PyArg_ParseTuple(args, "OfOO:dafl_entropy_backward", &o_dlogits, &dloss, &o_probs, &o_pbar))
        return NULL;
    ARG_CHECK(ck, "dafl_entropy_backward");
    float *dlogits, *probs, *pbar;
    if (arg_f32(&ck, "dlogits", o_dlogits, "N C", ARG_OUT, &dlogits) < 0 ||
        arg_f32(&ck, "probs", o_probs, "N C", ARG_IN, &probs) < 0 ||
        arg_f32(&ck, "mean_probs", o_pbar, "C", ARG_IN, &pbar) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_dafl_entropy_backward(dlogits, dloss, probs, pbar, arg_dim(&ck, "N"), arg_dim(&ck, "C"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_tv_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_norms, *o_x;
    if (!PyArg_ParseTuple(args, "OO:tv_forward", &o_norms, &o_x))
        return NULL;
    ARG_CHECK(ck, "tv_forward");
    float *norms, *x;
    if (arg_bind(&ck, "D", 4, "the four directions") < 0 || arg_f32(&ck, "norms", o_norms, "D", ARG_OUT, &norms) < 0 ||
        arg_f32(&ck, "x", o_x, "N CH IH IW", ARG_IN, &x) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    float l1 = 0.0f, l2 = 0.0f;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_tv_forward(&l1, &l2, norms, x, arg_dim(&ck, "N"), arg_dim(&ck, "CH"), arg_dim(&ck, "IH"),
                          arg_dim(&ck, "IW"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    return Py_BuildValue("(dd)", (double)l1, (double)l2);
}

static PyObject *py_tv_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_x, *o_norms;
    float dl1, dl2;
    if (!PyArg_ParseTuple(args, "OffOO:tv_backward", &o_dx, &dl1, &dl2, &o_x, &o_norms))
        return NULL;
    ARG_CHECK(ck, "tv_backward");
    float *dx, *x, *norms;
    if (arg_bind(&ck, "D", 4, "the four directions") < 0 || arg_f32(&ck, "dx", o_dx, "N CH IH IW", ARG_OUT, &dx) < 0 ||
        arg_f32(&ck, "x", o_x, "N CH IH IW", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "norms", o_norms, "D", ARG_IN, &norms) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_tv_backward(dx, dl1, dl2, x, norms, arg_dim(&ck, "N"), arg_dim(&ck, "CH"), arg_dim(&ck, "IH"),
                           arg_dim(&ck, "IW"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_distill_methods[] = {
    {"kd_kl_forward", py_kd_kl_forward, METH_VARARGS,
     "kd_kl_forward(student_probs, teacher_probs, student_logits, teacher_logits, tau) -> tau^2 batchmean KL"},
    {"kd_kl_backward", py_kd_kl_backward, METH_VARARGS,
     "kd_kl_backward(dstudent_logits, dteacher_logits, dloss, student_probs, teacher_probs, student_logits, "
     "teacher_logits, tau): accumulate"},
    {"adi_js_forward", py_adi_js_forward, METH_VARARGS,
     "adi_js_forward(student_probs, teacher_probs, student_logits, teacher_logits, tau) -> batchmean JS of the "
     "clamped softmaxes"},
    {"adi_js_backward", py_adi_js_backward, METH_VARARGS,
     "adi_js_backward(dstudent_logits, dteacher_logits, dloss, student_probs, teacher_probs, tau): accumulate"},
    {"bn_stat_match_forward", py_bn_stat_match_forward, METH_VARARGS,
     "bn_stat_match_forward(mean, var, x, running_mean, running_var) -> ||mean - rm|| + ||var - rv||"},
    {"bn_stat_match_backward", py_bn_stat_match_backward, METH_VARARGS,
     "bn_stat_match_backward(dx, dloss, x, mean, var, running_mean, running_var): accumulate"},
    {"dafl_activation_forward", py_dafl_activation_forward, METH_VARARGS,
     "dafl_activation_forward(features) -> -mean |features|"},
    {"dafl_activation_backward", py_dafl_activation_backward, METH_VARARGS,
     "dafl_activation_backward(dfeatures, dloss, features): accumulate"},
    {"dafl_entropy_forward", py_dafl_entropy_forward, METH_VARARGS,
     "dafl_entropy_forward(probs, mean_probs, logits) -> sum pbar ln pbar"},
    {"dafl_entropy_backward", py_dafl_entropy_backward, METH_VARARGS,
     "dafl_entropy_backward(dlogits, dloss, probs, mean_probs): accumulate"},
    {"tv_forward", py_tv_forward, METH_VARARGS, "tv_forward(norms, x) -> (l1, l2) total variation"},
    {"tv_backward", py_tv_backward, METH_VARARGS, "tv_backward(dx, dl1, dl2, x, norms): accumulate"},
    {NULL, NULL, 0, NULL},
};
