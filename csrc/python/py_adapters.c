/* py_adapters.c: Python entry points for the adapters beyond LoRA, the adapters section of peftc.h:
 * SoRA and Hydra (sora.c, hydra.c), then Bone / MiSS and Bat (bone.c). Shapes come from the arrays;
 * every wrapper is parse, validate, release the GIL, call, map the status. Scratch buffers are checked
 * against the kernels' *_workspace_size() queries, and the divisibility rules of each Bone / Bat variant
 * here, so the error can name r and the sizes. LoRA and the plain linear layer are in py_linear_lora.c. */
#include "args.h"

static PyObject *py_sora_forward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long OC, R;
    if (!PyArg_ParseTuple(args, "LL:sora_forward_workspace_size", &OC, &R))
        return NULL;
    if (OC < 0 || R < 0) {
        PyErr_Format(PyExc_ValueError, "sora_forward_workspace_size: sizes must be >= 0, got OC=%lld R=%lld", OC, R);
        return NULL;
    }
    return PyLong_FromLongLong(peftc_sora_forward_workspace_size(OC, R));
}

static PyObject *py_sora_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_xd, *o_u, *o_work, *o_x, *o_w, *o_b, *o_a, *o_bm, *o_g;
    float scale, p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOffKK:sora_forward", &o_y, &o_xd, &o_u, &o_work, &o_x, &o_w, &o_b, &o_a,
                          &o_bm, &o_g, &scale, &p, &seed, &offset))
        return NULL;
    ARG_CHECK(ck, "sora_forward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *y, *xd, *u, *work, *x, *w, *b, *a, *bm, *g;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 ||
        arg_f32(&ck, "xd", o_xd, "N IC", ARG_OUT | (p > 0.0f ? 0 : ARG_OPTIONAL), &xd) < 0 ||
        arg_f32(&ck, "u", o_u, "N R", ARG_OUT, &u) < 0 || arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 || arg_f32(&ck, "lora_A", o_a, "R IC", ARG_IN, &a) < 0 ||
        arg_f32(&ck, "lora_B", o_bm, "OC R", ARG_IN, &bm) < 0 || arg_f32(&ck, "gate", o_g, "R", ARG_IN, &g) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    if (p == 0.0f && xd) {
        PyErr_SetString(PyExc_ValueError, "sora_forward: 'xd' must be None when dropout is 0");
        return NULL;
    }
    const int64_t N = arg_dim(&ck, "N"), IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC"), R = arg_dim(&ck, "R");
    if (arg_workspace(&ck, peftc_sora_forward_workspace_size(OC, R)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_sora_forward(y, xd, u, work, x, w, b, a, bm, g, scale, p, seed, offset, N, IC, OC, R);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_sora_backward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long N, IC, OC, R;
    float p;
    if (!PyArg_ParseTuple(args, "LLLLf:sora_backward_workspace_size", &N, &IC, &OC, &R, &p))
        return NULL;
    if (N < 0 || IC < 0 || OC < 0 || R < 0) {
        PyErr_Format(PyExc_ValueError,
                     "sora_backward_workspace_size: sizes must be >= 0, got N=%lld IC=%lld OC=%lld R=%lld", N, IC, OC,
                     R);
        return NULL;
    }
    return PyLong_FromLongLong(peftc_sora_backward_workspace_size(N, IC, OC, R, p));
}

static PyObject *py_sora_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_da, *o_dbm, *o_dg, *o_work, *o_dy, *o_xin, *o_u, *o_w, *o_a, *o_bm, *o_g;
    float scale, p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOffKK:sora_backward", &o_dx, &o_da, &o_dbm, &o_dg, &o_work, &o_dy, &o_xin,
                          &o_u, &o_w, &o_a, &o_bm, &o_g, &scale, &p, &seed, &offset))
        return NULL;
    ARG_CHECK(ck, "sora_backward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *dx, *da, *dbm, *dg, *work, *dy, *xin, *u, *w, *a, *bm, *g;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dlora_A", o_da, "R IC", ARG_OUT | ARG_OPTIONAL, &da) < 0 ||
        arg_f32(&ck, "dlora_B", o_dbm, "OC R", ARG_OUT | ARG_OPTIONAL, &dbm) < 0 ||
        arg_f32(&ck, "dgate", o_dg, "R", ARG_OUT | ARG_OPTIONAL, &dg) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "xin", o_xin, "N IC", ARG_IN, &xin) < 0 || arg_f32(&ck, "u", o_u, "N R", ARG_IN, &u) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 || arg_f32(&ck, "lora_A", o_a, "R IC", ARG_IN, &a) < 0 ||
        arg_f32(&ck, "lora_B", o_bm, "OC R", ARG_IN, &bm) < 0 || arg_f32(&ck, "gate", o_g, "R", ARG_IN, &g) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC"), R = arg_dim(&ck, "R");
    if (arg_workspace(&ck, peftc_sora_backward_workspace_size(N, IC, OC, R, p)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_sora_backward(dx, da, dbm, dg, work, dy, xin, u, w, a, bm, g, scale, p, seed, offset, N, IC, OC, R);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_sora_gate_threshold(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_g;
    float tau;
    int compat;
    if (!PyArg_ParseTuple(args, "Ofp:sora_gate_threshold", &o_g, &tau, &compat))
        return NULL;
    ARG_CHECK(ck, "sora_gate_threshold");
    if (!(tau >= 0.0f) || isinf(tau)) {
        PyErr_Format(PyExc_ValueError, "sora_gate_threshold: 'tau' must be finite and >= 0, got %g", (double)tau);
        return NULL;
    }
    float *g;
    if (arg_f32(&ck, "gate", o_g, "*", ARG_OUT, &g) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_sora_gate_threshold(g, tau, compat, arg_dim(&ck, "P"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_hydra_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_y0, *o_pp, *o_q, *o_x, *o_w, *o_b, *o_ap, *o_bp, *o_as, *o_bs;
    float sp, ss;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOff:hydra_forward", &o_y, &o_y0, &o_pp, &o_q, &o_x, &o_w, &o_b, &o_ap, &o_bp,
                          &o_as, &o_bs, &sp, &ss))
        return NULL;
    ARG_CHECK(ck, "hydra_forward");
    float *y, *y0, *pp, *q, *x, *w, *b, *ap, *bp, *as, *bs;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 || arg_f32(&ck, "y0", o_y0, "N OC", ARG_OUT, &y0) < 0 ||
        arg_f32(&ck, "p", o_pp, "N RP", ARG_OUT, &pp) < 0 || arg_f32(&ck, "q", o_q, "N RS", ARG_OUT, &q) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "par_A", o_ap, "RP IC", ARG_IN, &ap) < 0 ||
        arg_f32(&ck, "par_B", o_bp, "OC RP", ARG_IN, &bp) < 0 ||
        arg_f32(&ck, "seq_A", o_as, "RS OC", ARG_IN, &as) < 0 ||
        arg_f32(&ck, "seq_B", o_bs, "OC RS", ARG_IN, &bs) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_hydra_forward(y, y0, pp, q, x, w, b, ap, bp, as, bs, sp, ss, arg_dim(&ck, "N"), arg_dim(&ck, "IC"),
                             arg_dim(&ck, "OC"), arg_dim(&ck, "RP"), arg_dim(&ck, "RS"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_hydra_backward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long N, OC, RP, RS;
    if (!PyArg_ParseTuple(args, "LLLL:hydra_backward_workspace_size", &N, &OC, &RP, &RS))
        return NULL;
    if (N < 0 || OC < 0 || RP < 0 || RS < 0) {
        PyErr_Format(PyExc_ValueError,
                     "hydra_backward_workspace_size: sizes must be >= 0, got N=%lld OC=%lld RP=%lld RS=%lld", N, OC, RP,
                     RS);
        return NULL;
    }
    return PyLong_FromLongLong(peftc_hydra_backward_workspace_size(N, OC, RP, RS));
}

static PyObject *py_hydra_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dap, *o_dbp, *o_das, *o_dbs, *o_work, *o_dy, *o_x, *o_y0, *o_pp, *o_q, *o_w, *o_ap, *o_bp, *o_as,
        *o_bs;
    float sp, ss;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOOff:hydra_backward", &o_dx, &o_dap, &o_dbp, &o_das, &o_dbs, &o_work,
                          &o_dy, &o_x, &o_y0, &o_pp, &o_q, &o_w, &o_ap, &o_bp, &o_as, &o_bs, &sp, &ss))
        return NULL;
    ARG_CHECK(ck, "hydra_backward");
    float *dx, *dap, *dbp, *das, *dbs, *work, *dy, *x, *y0, *pp, *q, *w, *ap, *bp, *as, *bs;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dpar_A", o_dap, "RP IC", ARG_OUT | ARG_OPTIONAL, &dap) < 0 ||
        arg_f32(&ck, "dpar_B", o_dbp, "OC RP", ARG_OUT | ARG_OPTIONAL, &dbp) < 0 ||
        arg_f32(&ck, "dseq_A", o_das, "RS OC", ARG_OUT | ARG_OPTIONAL, &das) < 0 ||
        arg_f32(&ck, "dseq_B", o_dbs, "OC RS", ARG_OUT | ARG_OPTIONAL, &dbs) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "y0", o_y0, "N OC", ARG_IN, &y0) < 0 ||
        arg_f32(&ck, "p", o_pp, "N RP", ARG_IN, &pp) < 0 || arg_f32(&ck, "q", o_q, "N RS", ARG_IN, &q) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 || arg_f32(&ck, "par_A", o_ap, "RP IC", ARG_IN, &ap) < 0 ||
        arg_f32(&ck, "par_B", o_bp, "OC RP", ARG_IN, &bp) < 0 ||
        arg_f32(&ck, "seq_A", o_as, "RS OC", ARG_IN, &as) < 0 ||
        arg_f32(&ck, "seq_B", o_bs, "OC RS", ARG_IN, &bs) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC");
    const int64_t RP = arg_dim(&ck, "RP"), RS = arg_dim(&ck, "RS");
    if (arg_workspace(&ck, peftc_hydra_backward_workspace_size(N, OC, RP, RS)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_hydra_backward(dx, dap, dbp, das, dbs, work, dy, x, y0, pp, q, w, ap, bp, as, bs, sp, ss, N, IC, OC, RP,
                              RS);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_hydra_merge_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long IC, RS;
    if (!PyArg_ParseTuple(args, "LL:hydra_merge_workspace_size", &IC, &RS))
        return NULL;
    if (IC < 0 || RS < 0) {
        PyErr_Format(PyExc_ValueError, "hydra_merge_workspace_size: sizes must be >= 0, got IC=%lld RS=%lld", IC, RS);
        return NULL;
    }
    return PyLong_FromLongLong(peftc_hydra_merge_workspace_size(IC, RS));
}

static PyObject *py_hydra_merge(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_w, *o_b, *o_work, *o_ap, *o_bp, *o_as, *o_bs;
    float sp, ss, sign;
    if (!PyArg_ParseTuple(args, "OOOOOOOfff:hydra_merge", &o_w, &o_b, &o_work, &o_ap, &o_bp, &o_as, &o_bs, &sp, &ss,
                          &sign))
        return NULL;
    ARG_CHECK(ck, "hydra_merge");
    if (sign != 1.0f && sign != -1.0f) {
        PyErr_SetString(PyExc_ValueError, "hydra_merge: 'sign' must be 1 or -1");
        return NULL;
    }
    float *w, *b, *work, *ap, *bp, *as, *bs;
    if (arg_f32(&ck, "weight", o_w, "OC IC", ARG_OUT, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OUT | ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_f32(&ck, "par_A", o_ap, "RP IC", ARG_IN, &ap) < 0 ||
        arg_f32(&ck, "par_B", o_bp, "OC RP", ARG_IN, &bp) < 0 ||
        arg_f32(&ck, "seq_A", o_as, "RS OC", ARG_IN, &as) < 0 ||
        arg_f32(&ck, "seq_B", o_bs, "OC RS", ARG_IN, &bs) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC"), RP = arg_dim(&ck, "RP"), RS = arg_dim(&ck, "RS");
    if (arg_workspace(&ck, peftc_hydra_merge_workspace_size(IC, RS)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_hydra_merge(w, b, work, ap, bp, as, bs, sp, ss, sign, IC, OC, RP, RS);
    Py_END_ALLOW_THREADS
    if (st == PEFTC_ERR_ARG) {
        PyErr_Format(PyExc_ValueError,
                     "hydra_merge: I + seq_scale * seq_A seq_B (%lld x %lld) is singular; the merged weight cannot "
                     "be unmerged (keep a copy of the base weight instead)",
                     (long long)RS, (long long)RS);
        return NULL;
    }
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

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
    ARG_CHECK(ck, "bone_forward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *y, *s, *xd, *x, *w, *b, *d;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 || arg_f32(&ck, "s", o_s, "N R", ARG_OUT, &s) < 0 ||
        arg_f32(&ck, "xd", o_xd, "N IC", ARG_OUT | (p > 0.0f ? 0 : ARG_OPTIONAL), &xd) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "miss_block", o_d, "R MR", ARG_IN, &d) < 0 || arg_no_alias(&ck) < 0 || bone_check_sizes(&ck) < 0)
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
        PyErr_Format(PyExc_ValueError, "bone_backward_workspace_size: sizes must be >= 0, got N=%lld IC=%lld R=%lld", N,
                     IC, R);
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
    if (!PyArg_ParseTuple(args, "OOOOOOOfKK:bone_backward", &o_dx, &o_dd, &o_work, &o_dy, &o_s, &o_w, &o_d, &p, &seed,
                          &offset))
        return NULL;
    ARG_CHECK(ck, "bone_backward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *dx, *dd, *work, *dy, *s, *w, *d;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dmiss_block", o_dd, "R MR", ARG_OUT | ARG_OPTIONAL, &dd) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "s", o_s, "N R", ARG_IN, &s) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "miss_block", o_d, "R MR", ARG_IN, &d) < 0 || arg_no_alias(&ck) < 0 || bone_check_sizes(&ck) < 0)
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
    ARG_CHECK(ck, "bone_merge");
    float *w, *d;
    if (arg_f32(&ck, "weight", o_w, "OC IC", ARG_OUT, &w) < 0 ||
        arg_f32(&ck, "miss_block", o_d, "R MR", ARG_IN, &d) < 0 || arg_no_alias(&ck) < 0 || bone_check_sizes(&ck) < 0)
        return NULL;
    if (sign != 1.0f && sign != -1.0f) {
        PyErr_SetString(PyExc_ValueError, "bone_merge: 'sign' must be 1 or -1");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_bone_merge(w, d, sign, arg_dim(&ck, "IC"), arg_dim(&ck, "OC"), arg_dim(&ck, "R"), arg_dim(&ck, "MR"));
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
    ARG_CHECK(ck, "bat_forward");
    float *y, *weff, *x, *w, *b, *t;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 || arg_f32(&ck, "weff", o_weff, "OC IC", ARG_OUT, &weff) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "miss_block", o_t, "NB R R", ARG_IN, &t) < 0 || arg_no_alias(&ck) < 0 || bat_check_sizes(&ck) < 0)
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
    ARG_CHECK(ck, "bat_weight");
    float *weff, *w, *t;
    if (arg_f32(&ck, "weff", o_weff, "OC IC", ARG_OUT, &weff) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "miss_block", o_t, "NB R R", ARG_IN, &t) < 0 || arg_no_alias(&ck) < 0 || bat_check_sizes(&ck) < 0)
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
    ARG_CHECK(ck, "bat_backward");
    float *dx, *dt, *work, *dy, *x, *w, *t;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dmiss_block", o_dt, "NB R R", ARG_OUT | ARG_OPTIONAL, &dt) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 ||
        arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "miss_block", o_t, "NB R R", ARG_IN, &t) < 0 || arg_no_alias(&ck) < 0 || bat_check_sizes(&ck) < 0)
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
    ARG_CHECK(ck, "bat_merge");
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

PyMethodDef peftc_py_adapters_methods[] = {
    {"sora_forward_workspace_size", py_sora_forward_workspace_size, METH_VARARGS,
     "sora_forward_workspace_size(OC, R) -> floats of scratch sora_forward needs"},
    {"sora_forward", py_sora_forward, METH_VARARGS,
     "sora_forward(y, xd, u, work, x, weight, bias, lora_A, lora_B, gate, scale, p, seed, offset)"},
    {"sora_backward_workspace_size", py_sora_backward_workspace_size, METH_VARARGS,
     "sora_backward_workspace_size(N, IC, OC, R, p) -> floats of scratch sora_backward needs"},
    {"sora_backward", py_sora_backward, METH_VARARGS,
     "sora_backward(dx, dlora_A, dlora_B, dgate, work, dy, xin, u, weight, lora_A, lora_B, gate, scale, p, seed, "
     "offset)"},
    {"sora_gate_threshold", py_sora_gate_threshold, METH_VARARGS,
     "sora_gate_threshold(gate, tau, compat): the proximal step on the gates, in place"},
    {"hydra_forward", py_hydra_forward, METH_VARARGS,
     "hydra_forward(y, y0, p, q, x, weight, bias, par_A, par_B, seq_A, seq_B, par_scale, seq_scale)"},
    {"hydra_backward_workspace_size", py_hydra_backward_workspace_size, METH_VARARGS,
     "hydra_backward_workspace_size(N, OC, RP, RS) -> floats of scratch hydra_backward needs"},
    {"hydra_backward", py_hydra_backward, METH_VARARGS,
     "hydra_backward(dx, dpar_A, dpar_B, dseq_A, dseq_B, work, dy, x, y0, p, q, weight, par_A, par_B, seq_A, seq_B, "
     "par_scale, seq_scale)"},
    {"hydra_merge_workspace_size", py_hydra_merge_workspace_size, METH_VARARGS,
     "hydra_merge_workspace_size(IC, RS) -> floats of scratch hydra_merge needs"},
    {"hydra_merge", py_hydra_merge, METH_VARARGS,
     "hydra_merge(weight, bias, work, par_A, par_B, seq_A, seq_B, par_scale, seq_scale, sign): sign=1 merges, "
     "-1 unmerges"},
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
