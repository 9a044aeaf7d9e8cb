/* py_linear_lora.c: Python entry points for the linear layer and LoRA section of peftc.h: the frozen
 * or trainable linear layer (linear.c) and the LoRA layer (lora.c). Shapes come from the arrays; every
 * wrapper is parse, validate, release the GIL, call, map the status. The other adapters are in
 * py_adapters.c. */
#include "args.h"

#include <string.h>

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
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN | ARG_OPTIONAL, &w) < 0 ||
        arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 || arg_f32(&ck, "lora_A", o_a, "R IC", ARG_IN, &a) < 0 ||
        arg_f32(&ck, "lora_B", o_bm, "OC R", ARG_IN, &bm) < 0 ||
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
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN | ARG_OPTIONAL, &w) < 0 ||
        arg_f32(&ck, "lora_A", o_a, "R IC", ARG_IN, &a) < 0 || arg_f32(&ck, "lora_B", o_bm, "OC R", ARG_IN, &bm) < 0 ||
        arg_no_alias(&ck) < 0)
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

/* ---- LoRA with one adapter per row (lora_mixed.c) ----------------------------------------------
 * The adapters come as sequences (tuple or list), one entry per adapter; each adapter's arrays are
 * checked in an ArgCheck of their own, with IC and OC bound to the layer's, so that an error names the
 * entry ('lora_B[2]') and the shapes, and no output overlaps any array of any adapter. */
enum { MIXED_FIELDS = 5 };

typedef struct {
    const char *name; /* "lora_A": the entries are named lora_A[0], lora_A[1], ... */
    PyObject *seq;    /* a tuple or list of K arrays, or None for an optional field: no array for any adapter */
    const char *dims;
    int flags;
} MixedField;

typedef struct {
    int64_t K;
    ArgCheck *ck; /* K checks, one per adapter */
    char (*names)[MIXED_FIELDS][24];
    float **ptr;   /* field f of adapter k at ptr[f * K + k] */
    int64_t *rank; /* K */
} Mixed;

static void mixed_free(Mixed *m)
{
    for (int64_t k = 0; m->ck && k < m->K; k++)
        arg_release(&m->ck[k]);
    PyMem_Free(m->ck);
    PyMem_Free(m->names);
    PyMem_Free(m->ptr);
    PyMem_Free(m->rank);
}

/* Check the K adapters' arrays of `fields` against the layer's check `main` (x gives IC, y or dy OC);
 * fills m (free it with mixed_free, also after a failure). */
static int mixed_parse(Mixed *m, ArgCheck *main, const MixedField *fields, int nf, int64_t K)
{
    memset(m, 0, sizeof(*m));
    m->K = K;
    m->ck = PyMem_Calloc((size_t)K + 1, sizeof(ArgCheck));
    m->names = PyMem_Calloc((size_t)K + 1, sizeof(*m->names));
    m->ptr = PyMem_Calloc((size_t)(nf * K) + 1, sizeof(float *));
    m->rank = PyMem_Calloc((size_t)K + 1, sizeof(int64_t));
    if (!m->ck || !m->names || !m->ptr || !m->rank) {
        PyErr_NoMemory();
        return -1;
    }
    for (int64_t k = 0; k < K; k++)
        arg_init(&m->ck[k], main->fn);
    for (int f = 0; f < nf; f++) {
        if (fields[f].seq == Py_None && (fields[f].flags & ARG_OPTIONAL))
            continue;
        if (!PyTuple_Check(fields[f].seq) && !PyList_Check(fields[f].seq)) {
            PyErr_Format(PyExc_TypeError,
                         "%s: argument '%s' must be a tuple or list of arrays, one per adapter, got %s", main->fn,
                         fields[f].name, Py_TYPE(fields[f].seq)->tp_name);
            return -1;
        }
        if (PySequence_Fast_GET_SIZE(fields[f].seq) != K) {
            PyErr_Format(PyExc_ValueError,
                         "%s: argument '%s' holds %zd arrays, but 'scale' has shape (%lld,): K = %lld "
                         "adapters",
                         main->fn, fields[f].name, PySequence_Fast_GET_SIZE(fields[f].seq), (long long)K, (long long)K);
            return -1;
        }
    }
    const char *letters[] = {"IC", "OC"};
    for (int64_t k = 0; k < K; k++) {
        ArgCheck *ck = &m->ck[k];
        for (int i = 0; i < 2; i++)
            for (int d = 0; d < main->ndims; d++)
                if (strcmp(main->dims[d].letter, letters[i]) == 0 &&
                    arg_bind(ck, letters[i], main->dims[d].size, main->dims[d].arg) < 0)
                    return -1;
        for (int f = 0; f < nf; f++) {
            if (fields[f].seq == Py_None && (fields[f].flags & ARG_OPTIONAL))
                continue;
            snprintf(m->names[k][f], sizeof(m->names[k][f]), "%s[%lld]", fields[f].name, (long long)k);
            /* the sequence holds a reference to its items while the call runs (a tuple cannot change; a list
             * changed by another thread would be the caller's race, as for any argument) */
            PyObject *item = PySequence_Fast_GET_ITEM(fields[f].seq, k);
            if (arg_f32(ck, m->names[k][f], item, fields[f].dims, fields[f].flags, &m->ptr[f * K + k]) < 0)
                return -1;
        }
        m->rank[k] = arg_dim(ck, "R");
        const int64_t RM = arg_dim(main, "RM");
        if (m->rank[k] > RM) {
            PyErr_Format(PyExc_ValueError, "%s: adapter %lld has rank R = %lld, but 'u' has only RM = %lld columns",
                         main->fn, (long long)k, (long long)m->rank[k], (long long)RM);
            return -1;
        }
        const char *out, *other;
        if (arg_no_alias(ck) < 0)
            return -1;
        int hit = arg_overlap(main, ck, &out, &other) || arg_overlap(ck, main, &out, &other);
        for (int64_t j = 0; !hit && j < k; j++)
            hit = arg_overlap(ck, &m->ck[j], &out, &other) || arg_overlap(&m->ck[j], ck, &out, &other);
        if (hit) {
            PyErr_Format(PyExc_ValueError, "%s: output argument '%s' overlaps argument '%s' in memory", main->fn, out,
                         other);
            return -1;
        }
    }
    return 0;
}

/* idx (N) holds adapter indices in [-1, K); iwork (IW) has room for the grouping (N + K + 1); sets *G to the rows of
 * the largest adapter group that is not one block of consecutive rows (lora_mixed.c gathers those). */
static int mixed_check_index(const ArgCheck *ck, const int64_t *idx, int64_t K, int64_t *G)
{
    const int64_t N = arg_dim(ck, "N");
    for (int64_t n = 0; n < N; n++)
        if (idx[n] < -1 || idx[n] >= K) {
            PyErr_Format(PyExc_ValueError, "%s: 'idx[%lld]' = %lld is not an adapter: it must be in [-1, K = %lld)",
                         ck->fn, (long long)n, (long long)idx[n], (long long)K);
            return -1;
        }
    if (arg_dim(ck, "IW") < N + K + 1) {
        PyErr_Format(PyExc_ValueError, "%s: 'iwork' has %lld int64, needs N + K + 1 = %lld", ck->fn,
                     (long long)arg_dim(ck, "IW"), (long long)(N + K + 1));
        return -1;
    }
    /* per adapter: rows, first and last row (a block when last - first + 1 == rows) */
    int64_t *seen = PyMem_Calloc(3 * (size_t)K + 1, sizeof(int64_t));
    if (!seen) {
        PyErr_NoMemory();
        return -1;
    }
    int64_t *count = seen, *first = seen + K, *last = seen + 2 * K;
    for (int64_t n = 0; n < N; n++)
        if (idx[n] >= 0) {
            if (count[idx[n]]++ == 0)
                first[idx[n]] = n;
            last[idx[n]] = n;
        }
    *G = 0;
    for (int64_t k = 0; k < K; k++)
        if (count[k] > *G && last[k] - first[k] + 1 != count[k])
            *G = count[k];
    PyMem_Free(seen);
    return 0;
}

static PyObject *py_lora_mixed_workspace_size(PyObject *self, PyObject *args)
{
    (void)self;
    long long N, G, IC, OC, RM;
    if (!PyArg_ParseTuple(args, "LLLLL:lora_mixed_workspace_size", &N, &G, &IC, &OC, &RM))
        return NULL;
    if (N < 0 || G < 0 || G > N || IC < 0 || OC < 0 || RM < 0) {
        PyErr_Format(PyExc_ValueError,
                     "lora_mixed_workspace_size: sizes must be >= 0 and G <= N, got N=%lld G=%lld IC=%lld OC=%lld "
                     "RM=%lld",
                     N, G, IC, OC, RM);
        return NULL;
    }
    /* N * RM + G * (OC + 2 IC) floats, G <= N: refuse sizes whose products overflow int64 rather than wrap */
    const long long cols_max = INT64_MAX / 4;
    if (IC > cols_max || OC > cols_max || RM > cols_max || (N > 0 && OC + 2 * IC + RM > INT64_MAX / N)) {
        PyErr_Format(PyExc_ValueError,
                     "lora_mixed_workspace_size: N=%lld with IC=%lld, OC=%lld and RM=%lld overflows int64", N, IC, OC,
                     RM);
        return NULL;
    }
    return PyLong_FromLongLong(peftc_lora_mixed_workspace_size(N, G, IC, OC, RM));
}

static PyObject *py_lora_mixed_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_y, *o_u, *o_work, *o_iwork, *o_x, *o_w, *o_b, *o_a, *o_bm, *o_bb, *o_scale, *o_idx;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOO:lora_mixed_forward", &o_y, &o_u, &o_work, &o_iwork, &o_x, &o_w, &o_b,
                          &o_a, &o_bm, &o_bb, &o_scale, &o_idx))
        return NULL;
    ARG_CHECK(ck, "lora_mixed_forward");
    float *y, *u, *work, *x, *w, *b, *scale;
    int64_t *iwork, *idx;
    if (arg_f32(&ck, "y", o_y, "N OC", ARG_OUT, &y) < 0 || arg_f32(&ck, "u", o_u, "N RM", ARG_OUT, &u) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_i64(&ck, "iwork", o_iwork, "IW", ARG_OUT, &iwork) < 0 || arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 || arg_f32(&ck, "bias", o_b, "OC", ARG_OPTIONAL, &b) < 0 ||
        arg_f32(&ck, "scale", o_scale, "K", ARG_IN, &scale) < 0 || arg_i64(&ck, "idx", o_idx, "N", ARG_IN, &idx) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC"), K = arg_dim(&ck, "K"),
                  RM = arg_dim(&ck, "RM");
    const MixedField fields[] = {
        {"lora_A", o_a, "R IC", ARG_IN}, {"lora_B", o_bm, "OC R", ARG_IN}, {"lora_bias", o_bb, "OC", ARG_OPTIONAL}};
    Mixed m;
    int64_t G;
    if (mixed_parse(&m, &ck, fields, 3, K) < 0 || mixed_check_index(&ck, idx, K, &G) < 0 ||
        arg_workspace(&ck, peftc_lora_mixed_workspace_size(N, G, IC, OC, RM)) < 0) {
        mixed_free(&m);
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_lora_mixed_forward(y, u, work, iwork, x, w, b, (const float *const *)m.ptr,
                                  (const float *const *)(m.ptr + K), (const float *const *)(m.ptr + 2 * K), scale,
                                  m.rank, idx, N, IC, OC, K, RM);
    Py_END_ALLOW_THREADS
    mixed_free(&m);
    if (st != PEFTC_OK)
        return arg_status_error(ck.fn, st);
    Py_RETURN_NONE;
}

static PyObject *py_lora_mixed_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *o_dx, *o_da, *o_dbm, *o_dbb, *o_work, *o_iwork, *o_dy, *o_x, *o_u, *o_w, *o_a, *o_bm, *o_scale, *o_idx;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOO:lora_mixed_backward", &o_dx, &o_da, &o_dbm, &o_dbb, &o_work, &o_iwork,
                          &o_dy, &o_x, &o_u, &o_w, &o_a, &o_bm, &o_scale, &o_idx))
        return NULL;
    ARG_CHECK(ck, "lora_mixed_backward");
    float *dx, *work, *dy, *x, *u, *w, *scale;
    int64_t *iwork, *idx;
    if (arg_f32(&ck, "dx", o_dx, "N IC", ARG_OUT | ARG_OPTIONAL, &dx) < 0 ||
        arg_f32(&ck, "work", o_work, "W", ARG_OUT, &work) < 0 ||
        arg_i64(&ck, "iwork", o_iwork, "IW", ARG_OUT, &iwork) < 0 ||
        arg_f32(&ck, "dy", o_dy, "N OC", ARG_IN, &dy) < 0 || arg_f32(&ck, "x", o_x, "N IC", ARG_IN, &x) < 0 ||
        arg_f32(&ck, "u", o_u, "N RM", ARG_IN, &u) < 0 || arg_f32(&ck, "weight", o_w, "OC IC", ARG_IN, &w) < 0 ||
        arg_f32(&ck, "scale", o_scale, "K", ARG_IN, &scale) < 0 || arg_i64(&ck, "idx", o_idx, "N", ARG_IN, &idx) < 0 ||
        arg_no_alias(&ck) < 0)
        return NULL;
    const int64_t N = arg_dim(&ck, "N"), IC = arg_dim(&ck, "IC"), OC = arg_dim(&ck, "OC"), K = arg_dim(&ck, "K"),
                  RM = arg_dim(&ck, "RM");
    const MixedField fields[] = {{"lora_A", o_a, "R IC", ARG_IN},
                                 {"lora_B", o_bm, "OC R", ARG_IN},
                                 {"dlora_A", o_da, "R IC", ARG_OUT | ARG_OPTIONAL},
                                 {"dlora_B", o_dbm, "OC R", ARG_OUT | ARG_OPTIONAL},
                                 {"dlora_bias", o_dbb, "OC", ARG_OUT | ARG_OPTIONAL}};
    Mixed m;
    int64_t G;
    if (mixed_parse(&m, &ck, fields, 5, K) < 0 || mixed_check_index(&ck, idx, K, &G) < 0 ||
        arg_workspace(&ck, peftc_lora_mixed_workspace_size(N, G, IC, OC, RM)) < 0) {
        mixed_free(&m);
        return NULL;
    }
    peftc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = peftc_lora_mixed_backward(dx, m.ptr + 2 * K, m.ptr + 3 * K, m.ptr + 4 * K, work, iwork, dy, x, u, w,
                                   (const float *const *)m.ptr, (const float *const *)(m.ptr + K), scale, m.rank, idx,
                                   N, IC, OC, K, RM);
    Py_END_ALLOW_THREADS
    mixed_free(&m);
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
    {"lora_mixed_workspace_size", py_lora_mixed_workspace_size, METH_VARARGS,
     "lora_mixed_workspace_size(N, G, IC, OC, RM) -> floats of scratch lora_mixed_forward / _backward need; G: "
     "rows of the largest adapter group that is not one block of consecutive rows"},
    {"lora_mixed_forward", py_lora_mixed_forward, METH_VARARGS,
     "lora_mixed_forward(y, u, work, iwork, x, weight, bias, lora_A, lora_B, lora_bias, scale, idx): row n runs "
     "adapter idx[n] (-1: none); lora_A, lora_B, lora_bias are sequences of K arrays (lora_bias entries or all None)"},
    {"lora_mixed_backward", py_lora_mixed_backward, METH_VARARGS,
     "lora_mixed_backward(dx, dlora_A, dlora_B, dlora_bias, work, iwork, dy, x, u, weight, lora_A, lora_B, scale, "
     "idx): accumulate (sequences of K arrays or None entries; a whole sequence may be None)"},
    {NULL, NULL, 0, NULL},
};
