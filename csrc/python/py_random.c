/* py_random.c: Python entry points for the random numbers, dropout and token sampling section of
 * peftc.h: the counter-based generator (rng.c), dropout (dropout.c) and sampling (sample.c). */
#include "args.h"

static PyObject *py_rng_fill(PyObject *args, int normal)
{
    const char *fn = normal ? "rng_normal" : "rng_uniform";
    PyObject *o_out;
    float p0, p1;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OffKK", &o_out, &p0, &p1, &seed, &offset))
        return NULL;
    ARG_CHECK(ck, fn);
    float *out;
    if (arg_f32(&ck, "out", o_out, "*", ARG_OUT, &out) < 0)
        return NULL;
    if (normal ? !(p1 >= 0.0f) : !(p0 <= p1)) {
        PyErr_Format(PyExc_ValueError, normal ? "%s: 'std' must be >= 0" : "%s: needs low <= high", fn);
        return NULL;
    }
    const int64_t P = arg_dim(&ck, "P");
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = normal ? peftc_rng_normal(out, p0, p1, seed, offset, P) : peftc_rng_uniform(out, p0, p1, seed, offset, P);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_rng_uniform(PyObject *self, PyObject *args)
{
    (void)self;
    return py_rng_fill(args, 0);
}

static PyObject *py_rng_normal(PyObject *self, PyObject *args)
{
    (void)self;
    return py_rng_fill(args, 1);
}

static PyObject *py_dropout(PyObject *args, int backward)
{
    const char *fn = backward ? "dropout_backward" : "dropout_forward";
    PyObject *o_out, *o_in;
    float p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOfKK", &o_out, &o_in, &p, &seed, &offset))
        return NULL;
    if (arg_probability(fn, "p", p) < 0)
        return NULL;
    ARG_CHECK(ck, fn);
    float *out, *in;
    if (arg_f32(&ck, backward ? "dx" : "out", o_out, "*", ARG_OUT, &out) < 0 ||
        arg_f32(&ck, backward ? "dout" : "x", o_in, "*", ARG_IN, &in) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t P = arg_dim(&ck, "P");
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = backward ? peftc_dropout_backward(out, in, p, seed, offset, P)
                  : peftc_dropout_forward(out, in, p, seed, offset, P);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_dropout_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_dropout(args, 0);
}

static PyObject *py_dropout_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_dropout(args, 1);
}

static PyObject *py_dropout_rows(PyObject *args, int backward)
{
    const char *fn = backward ? "dropout_rows_backward" : "dropout_rows_forward";
    PyObject *o_out, *o_in, *o_rows;
    float p;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOOfKK", &o_out, &o_in, &o_rows, &p, &seed, &offset))
        return NULL;
    if (arg_probability(fn, "p", p) < 0)
        return NULL;
    ARG_CHECK(ck, fn);
    float *out, *in;
    int64_t *rows;
    if (arg_f32(&ck, backward ? "dx" : "out", o_out, "N C", ARG_OUT, &out) < 0 ||
        arg_f32(&ck, backward ? "dout" : "x", o_in, "N C", ARG_IN, &in) < 0 ||
        arg_i64(&ck, "rows", o_rows, "N", 0, &rows) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), C = arg_dim(&ck, "C");
    for (int64_t n = 0; n < N; n++)
        if (rows[n] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: rows[%lld] = %lld is negative", fn, (long long)n, (long long)rows[n]);
            return NULL;
        }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = backward ? peftc_dropout_rows_backward(out, in, rows, p, seed, offset, N, C)
                  : peftc_dropout_rows_forward(out, in, rows, p, seed, offset, N, C);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_dropout_rows_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_dropout_rows(args, 0);
}

static PyObject *py_dropout_rows_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return py_dropout_rows(args, 1);
}

static PyObject *py_sample_tokens(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_tokens, *o_probs, *o_logits;
    float temperature, top_p;
    long long top_k;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "OOOfLfKK:sample_tokens", &o_tokens, &o_probs, &o_logits, &temperature, &top_k, &top_p,
                          &seed, &offset))
        return NULL;
    ARG_CHECK(ck, "sample_tokens");
    if (!(temperature >= 0.0f) || temperature == INFINITY || top_k < 0 || !(top_p > 0.0f && top_p <= 1.0f)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: needs a finite temperature >= 0, top_k >= 0 and top_p in (0, 1], got temperature=%g, "
                     "top_k=%lld, top_p=%g",
                     ck.fn, (double)temperature, top_k, (double)top_p);
        return NULL;
    }
    int64_t *tokens;
    float *probs, *logits;
    if (arg_i64(&ck, "tokens", o_tokens, "N", ARG_OUT, &tokens) < 0 ||
        arg_f32(&ck, "probs", o_probs, "N V", ARG_OUT, &probs) < 0 ||
        arg_f32(&ck, "logits", o_logits, "N V", ARG_IN, &logits) < 0 || arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), V = arg_dim(&ck, "V");
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_sample_tokens(tokens, probs, logits, temperature, top_k, top_p, seed, offset, N, V);
    Py_END_ALLOW_THREADS
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

PyMethodDef peftc_py_random_methods[] = {
    {"rng_uniform", py_rng_uniform, METH_VARARGS, "rng_uniform(out, low, high, seed, offset)"},
    {"rng_normal", py_rng_normal, METH_VARARGS, "rng_normal(out, mean, std, seed, offset); uses 2 counters each"},
    {"dropout_forward", py_dropout_forward, METH_VARARGS, "dropout_forward(out, x, p, seed, offset)"},
    {"dropout_backward", py_dropout_backward, METH_VARARGS, "dropout_backward(dx, dout, p, seed, offset): dx +="},
    {"dropout_rows_forward", py_dropout_rows_forward, METH_VARARGS,
     "dropout_rows_forward(out, x, rows, p, seed, offset): row n masked as row rows[n] of a larger array"},
    {"dropout_rows_backward", py_dropout_rows_backward, METH_VARARGS,
     "dropout_rows_backward(dx, dout, rows, p, seed, offset): dx +="},
    {"sample_tokens", py_sample_tokens, METH_VARARGS,
     "sample_tokens(tokens, probs, logits, temperature, top_k, top_p, seed, offset): one token per row"},
    {NULL, NULL, 0, NULL},
};
