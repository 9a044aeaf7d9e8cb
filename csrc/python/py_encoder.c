/* py_encoder.c: Python entry points for the transformer encoder ops section of peftc.h (embedding
 * sum, LayerNorm, the two GELUs, attention core, its packed-sequence and KV-cache forwards, and sentence_mean.c's mean
 * over tokens and L2 normalisation). Every wrapper is parse, validate, release the GIL, call, map
 * the status. The encoder's linear layers are in py_linear_lora.c. */
#include "args.h"

#include <limits.h>

/* ValueError naming the argument when an id falls outside [0, limit) */
static int ids_in_range(const char *fn, const char *name, const int64_t *ids, int64_t n, int64_t limit)
{
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= limit) {
            PyErr_Format(PyExc_ValueError, "%s: '%s' holds %lld at flat index %lld, outside [0, %lld)", fn, name,
                         (long long)ids[i], (long long)i, (long long)limit);
            return -1;
        }
    }
    return 0;
}

static int embedding_args(ArgCheck *ck, PyObject *o_ids, PyObject *o_types, PyObject *o_wte, PyObject *o_wpe,
                          PyObject *o_wtt, int64_t **ids, int64_t **types, int table_flags, float **wte, float **wpe,
                          float **wtt)
{
    const char *wte_name = table_flags ? "dword_embeddings" : "word_embeddings";
    const char *wpe_name = table_flags ? "dposition_embeddings" : "position_embeddings";
    const char *wtt_name = table_flags ? "dtoken_type_embeddings" : "token_type_embeddings";
    if (arg_i64(ck, "input_ids", o_ids, "B T", ARG_IN, ids) < 0 ||
        arg_i64(ck, "token_type_ids", o_types, "B T", ARG_OPTIONAL, types) < 0 ||
        arg_f32(ck, wte_name, o_wte, "V H", table_flags, wte) < 0 ||
        arg_f32(ck, wpe_name, o_wpe, "NP H", table_flags, wpe) < 0 ||
        arg_f32(ck, wtt_name, o_wtt, "NT H", table_flags, wtt) < 0)
        return -1;
    return 0;
}

static int embedding_ranges(ArgCheck *ck, const int64_t *ids, const int64_t *types)
{
    const int64_t B = arg_dim(ck, "B"), T = arg_dim(ck, "T"), NP = arg_dim(ck, "NP"), NT = arg_dim(ck, "NT");
    const int64_t V = arg_dim(ck, "V");
    if (NP >= 0 && T > NP) {
        PyErr_Format(PyExc_ValueError, "%s: sequence length T = %lld exceeds the %lld position embeddings", ck->fn,
                     (long long)T, (long long)NP);
        return -1;
    }
    if (V >= 0 && ids_in_range(ck->fn, "input_ids", ids, B * T, V) < 0)
        return -1;
    if (types && NT >= 0 && ids_in_range(ck->fn, "token_type_ids", types, B * T, NT) < 0)
        return -1;
    if (!types && NT == 0) {
        PyErr_Format(PyExc_ValueError, "%s: token_type_ids is None but the token-type table is empty", ck->fn);
        return -1;
    }
    return 0;
}

static PyObject *py_embedding_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_ids, *o_types, *o_wte, *o_wpe, *o_wtt;
    if (!PyArg_ParseTuple(args, "OOOOOO:embedding_forward", &o_out, &o_ids, &o_types, &o_wte, &o_wpe, &o_wtt))
        return NULL;
    ARG_CHECK(ck, "embedding_forward");
    float *out, *wte, *wpe, *wtt;
    int64_t *ids, *types;
    if (arg_f32(&ck, "out", o_out, "B T H", ARG_OUT, &out) < 0 ||
        embedding_args(&ck, o_ids, o_types, o_wte, o_wpe, o_wtt, &ids, &types, ARG_IN, &wte, &wpe, &wtt) < 0 ||
        arg_no_alias(&ck) < 0 || embedding_ranges(&ck, ids, types) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_embedding_forward(out, ids, types, wte, wpe, wtt, arg_dim(&ck, "B"), arg_dim(&ck, "T"),
                                 arg_dim(&ck, "H"), arg_dim(&ck, "V"), arg_dim(&ck, "NP"), arg_dim(&ck, "NT"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_embedding_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dwte, *o_dwpe, *o_dwtt, *o_dout, *o_ids, *o_types;
    long long padding_idx;
    if (!PyArg_ParseTuple(args, "OOOOOOL:embedding_backward", &o_dwte, &o_dwpe, &o_dwtt, &o_dout, &o_ids, &o_types,
                          &padding_idx))
        return NULL;
    ARG_CHECK(ck, "embedding_backward");
    float *dwte, *dwpe, *dwtt, *dout;
    int64_t *ids, *types;
    if (embedding_args(&ck, o_ids, o_types, o_dwte, o_dwpe, o_dwtt, &ids, &types, ARG_OUT | ARG_OPTIONAL, &dwte, &dwpe,
                       &dwtt) < 0 ||
        arg_f32(&ck, "dout", o_dout, "B T H", ARG_IN, &dout) < 0 || arg_no_alias(&ck) < 0 ||
        embedding_ranges(&ck, ids, types) < 0)
        return NULL;
    /* a table not given is not read; its size only has to admit the ids that index it */
    const int64_t V = arg_dim(&ck, "V"), NP = arg_dim(&ck, "NP"), NT = arg_dim(&ck, "NT");
    const int64_t T = arg_dim(&ck, "T");
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st =
        peftc_embedding_backward(dwte, dwpe, dwtt, dout, ids, types, padding_idx, arg_dim(&ck, "B"), T,
                                 arg_dim(&ck, "H"), V >= 0 ? V : INT64_MAX, NP >= 0 ? NP : T, NT >= 0 ? NT : INT64_MAX);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_layernorm_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_mean, *o_rstd, *o_x, *o_w, *o_b;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOOOf:layernorm_forward", &o_out, &o_mean, &o_rstd, &o_x, &o_w, &o_b, &eps))
        return NULL;
    ARG_CHECK(ck, "layernorm_forward");
    float *out, *mean, *rstd, *x, *w, *b;
    if (arg_f32(&ck, "out", o_out, "N H", ARG_OUT, &out) < 0 || arg_f32(&ck, "mean", o_mean, "N", ARG_OUT, &mean) < 0 ||
        arg_f32(&ck, "rstd", o_rstd, "N", ARG_OUT, &rstd) < 0 || arg_f32(&ck, "x", o_x, "N H", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "weight", o_w, "H", ARG_IN, &w) < 0 || arg_f32(&ck, "bias", o_b, "H", ARG_IN, &b) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    if (!(eps >= 0.0f) || arg_dim(&ck, "H") == 0) {
        PyErr_SetString(PyExc_ValueError, "layernorm_forward: needs eps >= 0 and at least one feature");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_layernorm_forward(out, mean, rstd, x, w, b, eps, arg_dim(&ck, "N"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

/* x is read and then overwritten with x + residual (an output in the alias check) */
static PyObject *py_layernorm_residual_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_mean, *o_rstd, *o_x, *o_res, *o_w, *o_b;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOOOOf:layernorm_residual_forward", &o_out, &o_mean, &o_rstd, &o_x, &o_res, &o_w,
                          &o_b, &eps))
        return NULL;
    ARG_CHECK(ck, "layernorm_residual_forward");
    float *out, *mean, *rstd, *x, *res, *w, *b;
    if (arg_f32(&ck, "out", o_out, "N H", ARG_OUT, &out) < 0 || arg_f32(&ck, "mean", o_mean, "N", ARG_OUT, &mean) < 0 ||
        arg_f32(&ck, "rstd", o_rstd, "N", ARG_OUT, &rstd) < 0 || arg_f32(&ck, "x", o_x, "N H", ARG_OUT, &x) < 0 ||
        arg_f32(&ck, "residual", o_res, "N H", ARG_IN, &res) < 0 || arg_f32(&ck, "weight", o_w, "H", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "H", ARG_IN, &b) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (!(eps >= 0.0f) || arg_dim(&ck, "H") == 0) {
        PyErr_SetString(PyExc_ValueError, "layernorm_residual_forward: needs eps >= 0 and at least one feature");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_layernorm_residual_forward(out, mean, rstd, x, res, w, b, eps, arg_dim(&ck, "N"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_layernorm_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dw, *o_db, *o_dout, *o_x, *o_w, *o_mean, *o_rstd;
    if (!PyArg_ParseTuple(args, "OOOOOOOO:layernorm_backward", &o_dx, &o_dw, &o_db, &o_dout, &o_x, &o_w, &o_mean,
                          &o_rstd))
        return NULL;
    ARG_CHECK(ck, "layernorm_backward");
    float *dx, *dw, *db, *dout, *x, *w, *mean, *rstd;
    if (arg_f32(&ck, "dx", o_dx, "N H", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "dweight", o_dw, "H", ARG_OUT | ARG_OPTIONAL, &dw) < 0 ||
        arg_f32(&ck, "dbias", o_db, "H", ARG_OUT | ARG_OPTIONAL, &db) < 0 ||
        arg_f32(&ck, "dout", o_dout, "N H", ARG_IN, &dout) < 0 || arg_f32(&ck, "x", o_x, "N H", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "weight", o_w, "H", ARG_IN, &w) < 0 || arg_f32(&ck, "mean", o_mean, "N", ARG_IN, &mean) < 0 ||
        arg_f32(&ck, "rstd", o_rstd, "N", ARG_IN, &rstd) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (arg_dim(&ck, "H") == 0) {
        PyErr_SetString(PyExc_ValueError, "layernorm_backward: needs at least one feature");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, arg_dim(&ck, "N"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

/* the exact GELU and its tanh approximation share the wrapper: same arguments, same checks */
static PyObject *py_gelu_fwd(PyObject *args, int tanh_form)
{
    const char *fn = tanh_form ? "gelu_tanh_forward" : "gelu_forward";
    PyObject *o_out, *o_x;
    if (!PyArg_ParseTuple(args, tanh_form ? "OO:gelu_tanh_forward" : "OO:gelu_forward", &o_out, &o_x))
        return NULL;
    ARG_CHECK(ck, fn);
    float *out, *x;
    if (arg_f32(&ck, "out", o_out, "*", ARG_OUT, &out) < 0 || arg_f32(&ck, "x", o_x, "*", ARG_IN, &x) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t P = arg_dim(&ck, "P");
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = tanh_form ? peftc_gelu_tanh_forward(out, x, P) : peftc_gelu_forward(out, x, P);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_gelu_bwd(PyObject *args, int tanh_form)
{
    const char *fn = tanh_form ? "gelu_tanh_backward" : "gelu_backward";
    PyObject *o_dx, *o_dout, *o_x;
    if (!PyArg_ParseTuple(args, tanh_form ? "OOO:gelu_tanh_backward" : "OOO:gelu_backward", &o_dx, &o_dout, &o_x))
        return NULL;
    ARG_CHECK(ck, fn);
    float *dx, *dout, *x;
    if (arg_f32(&ck, "dx", o_dx, "*", ARG_OUT, &dx) < 0 || arg_f32(&ck, "dout", o_dout, "*", ARG_IN, &dout) < 0 ||
        arg_f32(&ck, "x", o_x, "*", ARG_IN, &x) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t P = arg_dim(&ck, "P");
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = tanh_form ? peftc_gelu_tanh_backward(dx, dout, x, P) : peftc_gelu_backward(dx, dout, x, P);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_gelu_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_gelu_fwd(args, 0);
}

static PyObject *py_gelu_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_gelu_bwd(args, 0);
}

static PyObject *py_gelu_tanh_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_gelu_fwd(args, 1);
}

static PyObject *py_gelu_tanh_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_gelu_bwd(args, 1);
}

static int attention_heads(ArgCheck *ck, long long NH)
{
    const int64_t H = arg_dim(ck, "H");
    if (NH <= 0 || H % NH != 0) {
        PyErr_Format(PyExc_ValueError, "%s: num_heads = %lld must be positive and divide H = %lld", ck->fn, NH,
                     (long long)H);
        return -1;
    }
    return 0;
}

static PyObject *py_attention_workspace_size(PyObject *args, int backward)
{
    const char *fn = backward ? "attention_backward_workspace_size" : "attention_forward_workspace_size";
    long long T;
    float p;
    if (!PyArg_ParseTuple(
            args, backward ? "Lf:attention_backward_workspace_size" : "Lf:attention_forward_workspace_size", &T, &p))
        return NULL;
    /* at most 2 T^2 floats: refuse a T whose square overflows int64 rather than return a wrapped size */
    if (T < 0 || (T > 0 && T > LLONG_MAX / 2 / T)) {
        PyErr_Format(PyExc_ValueError, "%s: T must be >= 0 and 2 T^2 must fit in 64 bits, got T=%lld", fn, T);
        return NULL;
    }
    return PyLong_FromLongLong(backward ? peftc_attention_backward_workspace_size(T, p)
                                        : peftc_attention_forward_workspace_size(T, p));
}

static PyObject *py_attention_forward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    return py_attention_workspace_size(args, 0);
}

static PyObject *py_attention_backward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    return py_attention_workspace_size(args, 1);
}

static PyObject *py_attention_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_att, *o_work, *o_q, *o_k, *o_v, *o_mask;
    int causal;
    float p;
    unsigned long long seed, offset;
    long long NH;
    if (!PyArg_ParseTuple(args, "OOOOOOOpfKKL:attention_forward", &o_out, &o_att, &o_work, &o_q, &o_k, &o_v, &o_mask,
                          &causal, &p, &seed, &offset, &NH))
        return NULL;
    ARG_CHECK(ck, "attention_forward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *out, *att, *work, *q, *k, *v;
    int64_t *mask;
    if (arg_f32(&ck, "out", o_out, "B T H", ARG_OUT, &out) < 0 || arg_bind(&ck, "NH", NH, "num_heads") < 0 ||
        arg_f32(&ck, "att", o_att, "B NH T T", ARG_OUT, &att) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT | ARG_OPTIONAL, &work) < 0 ||
        arg_f32(&ck, "q", o_q, "B T H", ARG_IN, &q) < 0 || arg_f32(&ck, "k", o_k, "B T H", ARG_IN, &k) < 0 ||
        arg_f32(&ck, "v", o_v, "B T H", ARG_IN, &v) < 0 ||
        arg_i64(&ck, "attention_mask", o_mask, "B T", ARG_OPTIONAL, &mask) < 0 || arg_no_alias(&ck) < 0 ||
        attention_heads(&ck, NH) < 0)
        return NULL;
    const int64_t B = arg_dim(&ck, "B"), T = arg_dim(&ck, "T"), H = arg_dim(&ck, "H");
    if (arg_workspace(&ck, peftc_attention_forward_workspace_size(T, p)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_attention_forward(out, att, work, q, k, v, mask, causal, p, seed, offset, B, T, H, NH);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_attention_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dq, *o_dk, *o_dv, *o_work, *o_dout, *o_q, *o_k, *o_v, *o_att;
    float p;
    unsigned long long seed, offset;
    long long NH;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOfKKL:attention_backward", &o_dq, &o_dk, &o_dv, &o_work, &o_dout, &o_q, &o_k,
                          &o_v, &o_att, &p, &seed, &offset, &NH))
        return NULL;
    ARG_CHECK(ck, "attention_backward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *dq, *dk, *dv, *work, *dout, *q, *k, *v, *att;
    if (arg_f32(&ck, "dq", o_dq, "B T H", ARG_OUT | ARG_OPTIONAL, &dq) < 0 ||
        arg_f32(&ck, "dk", o_dk, "B T H", ARG_OUT | ARG_OPTIONAL, &dk) < 0 ||
        arg_f32(&ck, "dv", o_dv, "B T H", ARG_OUT | ARG_OPTIONAL, &dv) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_f32(&ck, "dout", o_dout, "B T H", ARG_IN, &dout) < 0 || arg_f32(&ck, "q", o_q, "B T H", ARG_IN, &q) < 0 ||
        arg_f32(&ck, "k", o_k, "B T H", ARG_IN, &k) < 0 || arg_f32(&ck, "v", o_v, "B T H", ARG_IN, &v) < 0 ||
        arg_bind(&ck, "NH", NH, "num_heads") < 0 || arg_f32(&ck, "att", o_att, "B NH T T", ARG_IN, &att) < 0 ||
        arg_no_alias(&ck) < 0 || attention_heads(&ck, NH) < 0)
        return NULL;
    const int64_t B = arg_dim(&ck, "B"), T = arg_dim(&ck, "T"), H = arg_dim(&ck, "H");
    if (arg_workspace(&ck, peftc_attention_backward_workspace_size(T, p)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_attention_backward(dq, dk, dv, work, dout, q, k, v, att, p, seed, offset, B, T, H, NH);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_mean_pool_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_x, *o_mask;
    if (!PyArg_ParseTuple(args, "OOO:mean_pool_forward", &o_out, &o_x, &o_mask))
        return NULL;
    ARG_CHECK(ck, "mean_pool_forward");
    float *out, *x;
    int64_t *mask;
    if (arg_f32(&ck, "out", o_out, "B H", ARG_OUT, &out) < 0 || arg_f32(&ck, "x", o_x, "B T H", ARG_IN, &x) < 0 ||
        arg_i64(&ck, "attention_mask", o_mask, "B T", ARG_OPTIONAL, &mask) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_mean_pool_forward(out, x, mask, arg_dim(&ck, "B"), arg_dim(&ck, "T"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_mean_pool_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dout, *o_mask;
    if (!PyArg_ParseTuple(args, "OOO:mean_pool_backward", &o_dx, &o_dout, &o_mask))
        return NULL;
    ARG_CHECK(ck, "mean_pool_backward");
    float *dx, *dout;
    int64_t *mask;
    if (arg_f32(&ck, "dx", o_dx, "B T H", ARG_OUT, &dx) < 0 || arg_f32(&ck, "dout", o_dout, "B H", ARG_IN, &dout) < 0 ||
        arg_i64(&ck, "attention_mask", o_mask, "B T", ARG_OPTIONAL, &mask) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_mean_pool_backward(dx, dout, mask, arg_dim(&ck, "B"), arg_dim(&ck, "T"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_l2_normalize_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_norm, *o_x;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOf:l2_normalize_forward", &o_out, &o_norm, &o_x, &eps))
        return NULL;
    ARG_CHECK(ck, "l2_normalize_forward");
    float *out, *norm, *x;
    if (arg_f32(&ck, "out", o_out, "N H", ARG_OUT, &out) < 0 || arg_f32(&ck, "norm", o_norm, "N", ARG_OUT, &norm) < 0 ||
        arg_f32(&ck, "x", o_x, "N H", ARG_IN, &x) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    if (!(eps > 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "l2_normalize_forward: 'eps' must be > 0");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_l2_normalize_forward(out, norm, x, eps, arg_dim(&ck, "N"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_l2_normalize_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_dout, *o_out, *o_norm;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOf:l2_normalize_backward", &o_dx, &o_dout, &o_out, &o_norm, &eps))
        return NULL;
    ARG_CHECK(ck, "l2_normalize_backward");
    float *dx, *dout, *out, *norm;
    if (arg_f32(&ck, "dx", o_dx, "N H", ARG_OUT, &dx) < 0 || arg_f32(&ck, "dout", o_dout, "N H", ARG_IN, &dout) < 0 ||
        arg_f32(&ck, "out", o_out, "N H", ARG_IN, &out) < 0 || arg_f32(&ck, "norm", o_norm, "N", ARG_IN, &norm) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    if (!(eps > 0.0f)) {
        PyErr_SetString(PyExc_ValueError, "l2_normalize_backward: 'eps' must be > 0");
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_l2_normalize_backward(dx, dout, out, norm, eps, arg_dim(&ck, "N"), arg_dim(&ck, "H"));
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

/* ---- packed-sequence attention ---- */

static PyObject *py_attention_cached_forward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long TQ, TK, NH;
    if (!PyArg_ParseTuple(args, "LLL:attention_cached_forward_workspace_size", &TQ, &TK, &NH))
        return NULL;
    /* at most 64 threads (parallel.h) times TK * max(TQ, NH) floats */
    const long long rows = TQ > NH ? TQ : NH;
    if (TQ < 0 || TK < 0 || NH < 1 || (rows > 0 && TK > LLONG_MAX / 64 / rows)) {
        PyErr_Format(PyExc_ValueError,
                     "attention_cached_forward_workspace_size: TQ, TK must be >= 0, NH >= 1, and TK max(TQ, NH) "
                     "times the threads must fit in 64 bits, got TQ=%lld, TK=%lld, NH=%lld",
                     TQ, TK, NH);
        return NULL;
    }
    return PyLong_FromLongLong(peftc_attention_cached_forward_workspace_size(TQ, TK, NH));
}

static PyObject *py_attention_cached_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_work, *o_q, *o_kc, *o_vc;
    long long TK, NH;
    if (!PyArg_ParseTuple(args, "OOOOOLL:attention_cached_forward", &o_out, &o_work, &o_q, &o_kc, &o_vc, &TK, &NH))
        return NULL;
    ARG_CHECK(ck, "attention_cached_forward");
    float *out, *work, *q, *kc, *vc;
    if (arg_f32(&ck, "out", o_out, "B TQ H", ARG_OUT, &out) < 0 || arg_bind(&ck, "NH", NH, "num_heads") < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "q", o_q, "B TQ H", ARG_IN, &q) < 0 ||
        arg_f32(&ck, "k_cache", o_kc, "B TC H", ARG_IN, &kc) < 0 ||
        arg_f32(&ck, "v_cache", o_vc, "B TC H", ARG_IN, &vc) < 0 || arg_no_alias(&ck) < 0 ||
        attention_heads(&ck, NH) < 0)
        return NULL;
    const int64_t B = arg_dim(&ck, "B"), TQ = arg_dim(&ck, "TQ"), TC = arg_dim(&ck, "TC"), H = arg_dim(&ck, "H");
    if (TK < TQ || TK > TC) {
        PyErr_Format(PyExc_ValueError,
                     "%s: length = %lld must be at least TQ = %lld (q) and at most TC = %lld (cache rows)", ck.fn, TK,
                     (long long)TQ, (long long)TC);
        return NULL;
    }
    if (arg_workspace(&ck, peftc_attention_cached_forward_workspace_size(TQ, TK, NH)) < 0)
        return NULL;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_attention_cached_forward(out, work, q, kc, vc, B, TQ, TK, TC, H, NH);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_attention_packed_workspace_size(PyObject *args, int backward)
{
    const char *fn = backward ? "attention_packed_backward_workspace_size" : "attention_packed_forward_workspace_size";
    long long T;
    float p = 0.0f;
    if (!PyArg_ParseTuple(args,
                          backward ? "Lf:attention_packed_backward_workspace_size"
                                   : "L:attention_packed_forward_workspace_size",
                          &T, &p))
        return NULL;
    /* at most 64 threads (parallel.h) times 2 T^2 floats */
    if (T < 0 || (T > 0 && T > LLONG_MAX / 128 / T)) {
        PyErr_Format(PyExc_ValueError, "%s: T must be >= 0 and 2 T^2 times the threads must fit in 64 bits, got T=%lld",
                     fn, T);
        return NULL;
    }
    return PyLong_FromLongLong(backward ? peftc_attention_packed_backward_workspace_size(T, p)
                                        : peftc_attention_packed_forward_workspace_size(T));
}

static PyObject *py_attention_packed_forward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    return py_attention_packed_workspace_size(args, 0);
}

static PyObject *py_attention_packed_backward_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    return py_attention_packed_workspace_size(args, 1);
}

/* offsets (P = S+1) start at 0, end at N and do not decrease; starts (S) or NULL are >= 0 and, with dropout,
 * place each sequence inside its padded row of width T. Sets *longest and *scores (sum of T_s^2). */
static int packed_offsets_ok(const ArgCheck *ck, const int64_t *offsets, const int64_t *starts, float p, int64_t T,
                             int64_t *longest, int64_t *scores)
{
    const int64_t N = arg_dim(ck, "N"), S = arg_dim(ck, "P") - 1;
    if (S < 0 || offsets[0] != 0 || offsets[S] != N) {
        PyErr_Format(PyExc_ValueError, "%s: offsets (P=%lld) must start at 0 and end at N=%lld", ck->fn,
                     (long long)(S + 1), (long long)N);
        return -1;
    }
    if (starts && arg_dim(ck, "S") != S) {
        PyErr_Format(PyExc_ValueError, "%s: starts has %lld entries, offsets (P=%lld) gives %lld sequences", ck->fn,
                     (long long)arg_dim(ck, "S"), (long long)(S + 1), (long long)S);
        return -1;
    }
    *longest = 0;
    *scores = 0;
    for (int64_t s = 0; s < S; s++) {
        const int64_t len = offsets[s + 1] - offsets[s], start = starts ? starts[s] : 0;
        if (len < 0) {
            PyErr_Format(PyExc_ValueError, "%s: offsets must not decrease (offsets[%lld] > offsets[%lld])", ck->fn,
                         (long long)s, (long long)(s + 1));
            return -1;
        }
        if (start < 0 || (p > 0.0f && start + len > T)) {
            PyErr_Format(PyExc_ValueError,
                         "%s: sequence %lld (%lld rows from position starts[%lld]=%lld) does not fit a padded row of "
                         "T=%lld",
                         ck->fn, (long long)s, (long long)len, (long long)s, (long long)start, (long long)T);
            return -1;
        }
        *longest = len > *longest ? len : *longest;
        *scores += len * len;
    }
    return 0;
}

static PyObject *py_attention_packed_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_out, *o_att, *o_work, *o_q, *o_k, *o_v, *o_offsets, *o_starts;
    float p;
    unsigned long long seed, offset;
    long long T, NH;
    if (!PyArg_ParseTuple(args, "OOOOOOOOfKKLL:attention_packed_forward", &o_out, &o_att, &o_work, &o_q, &o_k, &o_v,
                          &o_offsets, &o_starts, &p, &seed, &offset, &T, &NH))
        return NULL;
    ARG_CHECK(ck, "attention_packed_forward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *out, *att, *work, *q, *k, *v;
    int64_t *offsets, *starts;
    if (arg_f32(&ck, "out", o_out, "N H", ARG_OUT, &out) < 0 || arg_bind(&ck, "NH", NH, "num_heads") < 0 ||
        arg_f32(&ck, "att", o_att, "NA", ARG_OUT | ARG_OPTIONAL, &att) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 || arg_f32(&ck, "q", o_q, "N H", ARG_IN, &q) < 0 ||
        arg_f32(&ck, "k", o_k, "N H", ARG_IN, &k) < 0 || arg_f32(&ck, "v", o_v, "N H", ARG_IN, &v) < 0 ||
        arg_i64(&ck, "offsets", o_offsets, "P", 0, &offsets) < 0 ||
        arg_i64(&ck, "starts", o_starts, "S", ARG_OPTIONAL, &starts) < 0 || arg_no_alias(&ck) < 0 ||
        attention_heads(&ck, NH) < 0)
        return NULL;
    if (p > 0.0f && !att) {
        PyErr_Format(PyExc_ValueError,
                     "%s: dropout %g needs 'att' (dropout is for training, which keeps the "
                     "probabilities)",
                     ck.fn, (double)p);
        return NULL;
    }
    int64_t longest, scores;
    if (packed_offsets_ok(&ck, offsets, starts, p, T, &longest, &scores) < 0)
        return NULL;
    if (att && arg_dim(&ck, "NA") != NH * scores) {
        PyErr_Format(PyExc_ValueError, "%s: att has %lld floats, the sequences need NH * sum(T_s^2) = %lld", ck.fn,
                     (long long)arg_dim(&ck, "NA"), (long long)(NH * scores));
        return NULL;
    }
    if (arg_workspace(&ck, peftc_attention_packed_forward_workspace_size(longest)) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), H = arg_dim(&ck, "H"), S = arg_dim(&ck, "P") - 1;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_attention_packed_forward(out, att, work, q, k, v, offsets, starts, p, seed, offset, S, N, T, H, NH);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_attention_packed_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dq, *o_dk, *o_dv, *o_work, *o_dout, *o_q, *o_k, *o_v, *o_att, *o_offsets, *o_starts;
    float p;
    unsigned long long seed, offset;
    long long T, NH;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOfKKLL:attention_packed_backward", &o_dq, &o_dk, &o_dv, &o_work, &o_dout,
                          &o_q, &o_k, &o_v, &o_att, &o_offsets, &o_starts, &p, &seed, &offset, &T, &NH))
        return NULL;
    ARG_CHECK(ck, "attention_packed_backward");
    if (arg_probability(ck.fn, "dropout", p) < 0)
        return NULL;
    float *dq, *dk, *dv, *work, *dout, *q, *k, *v, *att;
    int64_t *offsets, *starts;
    if (arg_f32(&ck, "dq", o_dq, "N H", ARG_OUT | ARG_OPTIONAL, &dq) < 0 ||
        arg_f32(&ck, "dk", o_dk, "N H", ARG_OUT | ARG_OPTIONAL, &dk) < 0 ||
        arg_f32(&ck, "dv", o_dv, "N H", ARG_OUT | ARG_OPTIONAL, &dv) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_f32(&ck, "dout", o_dout, "N H", ARG_IN, &dout) < 0 || arg_f32(&ck, "q", o_q, "N H", ARG_IN, &q) < 0 ||
        arg_f32(&ck, "k", o_k, "N H", ARG_IN, &k) < 0 || arg_f32(&ck, "v", o_v, "N H", ARG_IN, &v) < 0 ||
        arg_bind(&ck, "NH", NH, "num_heads") < 0 || arg_f32(&ck, "att", o_att, "NA", ARG_IN, &att) < 0 ||
        arg_i64(&ck, "offsets", o_offsets, "P", 0, &offsets) < 0 ||
        arg_i64(&ck, "starts", o_starts, "S", ARG_OPTIONAL, &starts) < 0 || arg_no_alias(&ck) < 0 ||
        attention_heads(&ck, NH) < 0)
        return NULL;
    int64_t longest, scores;
    if (packed_offsets_ok(&ck, offsets, starts, p, T, &longest, &scores) < 0)
        return NULL;
    if (arg_dim(&ck, "NA") != NH * scores) {
        PyErr_Format(PyExc_ValueError, "%s: att has %lld floats, the sequences need NH * sum(T_s^2) = %lld", ck.fn,
                     (long long)arg_dim(&ck, "NA"), (long long)(NH * scores));
        return NULL;
    }
    if (arg_workspace(&ck, peftc_attention_packed_backward_workspace_size(longest, p)) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), H = arg_dim(&ck, "H"), S = arg_dim(&ck, "P") - 1;
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_attention_packed_backward(dq, dk, dv, work, dout, q, k, v, att, offsets, starts, p, seed, offset, S, N,
                                         T, H, NH);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_encoder_methods[] = {
    {"embedding_forward", py_embedding_forward, METH_VARARGS,
     "embedding_forward(out, input_ids, token_type_ids, word, position, token_type): summed embeddings"},
    {"embedding_backward", py_embedding_backward, METH_VARARGS,
     "embedding_backward(dword, dposition, dtoken_type, dout, input_ids, token_type_ids, padding_idx): scatter-add"},
    {"layernorm_forward", py_layernorm_forward, METH_VARARGS,
     "layernorm_forward(out, mean, rstd, x, weight, bias, eps)"},
    {"layernorm_backward", py_layernorm_backward, METH_VARARGS,
     "layernorm_backward(dx, dweight, dbias, dout, x, weight, mean, rstd): accumulate"},
    {"layernorm_residual_forward", py_layernorm_residual_forward, METH_VARARGS,
     "layernorm_residual_forward(out, mean, rstd, x, residual, weight, bias, eps): x += residual, then LayerNorm"},
    {"gelu_forward", py_gelu_forward, METH_VARARGS, "gelu_forward(out, x): exact erf GELU"},
    {"gelu_backward", py_gelu_backward, METH_VARARGS, "gelu_backward(dx, dout, x): dx +="},
    {"gelu_tanh_forward", py_gelu_tanh_forward, METH_VARARGS, "gelu_tanh_forward(out, x): GPT-2's tanh GELU"},
    {"gelu_tanh_backward", py_gelu_tanh_backward, METH_VARARGS, "gelu_tanh_backward(dx, dout, x): dx +="},
    {"attention_forward_workspace_size", py_attention_forward_workspace_size, METH_VARARGS,
     "attention_forward_workspace_size(T, p) -> floats"},
    {"attention_backward_workspace_size", py_attention_backward_workspace_size, METH_VARARGS,
     "attention_backward_workspace_size(T, p) -> floats"},
    {"attention_forward", py_attention_forward, METH_VARARGS,
     "attention_forward(out, att, work, q, k, v, attention_mask, causal, p, seed, offset, num_heads)"},
    {"attention_backward", py_attention_backward, METH_VARARGS,
     "attention_backward(dq, dk, dv, work, dout, q, k, v, att, p, seed, offset, num_heads): accumulate"},
    {"attention_packed_forward_workspace_size", py_attention_packed_forward_workspace_size, METH_VARARGS,
     "attention_packed_forward_workspace_size(T) -> floats (T: the longest sequence)"},
    {"attention_cached_forward_workspace_size", py_attention_cached_forward_workspace_size, METH_VARARGS,
     "attention_cached_forward_workspace_size(TQ, TK, NH) -> floats"},
    {"attention_cached_forward", py_attention_cached_forward, METH_VARARGS,
     "attention_cached_forward(out, work, q, k_cache, v_cache, length, num_heads)"},
    {"attention_packed_forward", py_attention_packed_forward, METH_VARARGS,
     "attention_packed_forward(out, att, work, q, k, v, offsets, starts, p, seed, offset, T, num_heads): each "
     "sequence's rows attend among themselves"},
    {"attention_packed_backward_workspace_size", py_attention_packed_backward_workspace_size, METH_VARARGS,
     "attention_packed_backward_workspace_size(T, p) -> floats (T: the longest sequence)"},
    {"attention_packed_backward", py_attention_packed_backward, METH_VARARGS,
     "attention_packed_backward(dq, dk, dv, work, dout, q, k, v, att, offsets, starts, p, seed, offset, T, "
     "num_heads): accumulate"},
    {"mean_pool_forward", py_mean_pool_forward, METH_VARARGS, "mean_pool_forward(out, x, attention_mask)"},
    {"mean_pool_backward", py_mean_pool_backward, METH_VARARGS, "mean_pool_backward(dx, dout, attention_mask): dx +="},
    {"l2_normalize_forward", py_l2_normalize_forward, METH_VARARGS, "l2_normalize_forward(out, norm, x, eps)"},
    {"l2_normalize_backward", py_l2_normalize_backward, METH_VARARGS,
     "l2_normalize_backward(dx, dout, out, norm, eps): dx +="},
    {NULL, NULL, 0, NULL},
};
