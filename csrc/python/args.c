/* args.c: the validation behind args.h. Holds no kernel calls. */
#include "args.h"

#include <string.h>

void arg_init(ArgCheck *ck, const char *fn)
{
    memset(ck, 0, sizeof(*ck));
    ck->fn = fn;
}

void arg_release(ArgCheck *ck)
{
    if (ck->nviews == 0)
        return;
    /* an exporter's release may run code; keep the exception the wrapper is returning with */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    for (int i = 0; i < ck->nviews; i++)
        PyBuffer_Release(&ck->views[i]);
    ck->nviews = 0;
    PyErr_Restore(type, value, tb);
}

int64_t arg_dim(const ArgCheck *ck, const char *letter)
{
    for (int i = 0; i < ck->ndims; i++)
        if (strcmp(ck->dims[i].letter, letter) == 0)
            return ck->dims[i].size;
    return -1;
}

/* One array argument as the checks see it, read from an ndarray or from a buffer view. */
typedef struct {
    char *data;
    Py_ssize_t nbytes;
    int ndim;
    const Py_ssize_t *shape;
    int contiguous; /* C order */
    int aligned;
    int writeable;
} Layout;

_Static_assert(sizeof(npy_intp) == sizeof(Py_ssize_t), "npy_intp and Py_ssize_t differ in size");

static PyObject *shape_tuple(const Layout *l)
{
    PyObject *shape = PyTuple_New(l->ndim);
    for (int d = 0; shape && d < l->ndim; d++) {
        PyObject *size = PyLong_FromSsize_t(l->shape[d]);
        if (!size)
            Py_CLEAR(shape);
        else
            PyTuple_SET_ITEM(shape, d, size);
    }
    return shape;
}

static int bind(ArgCheck *ck, const char *letter, int64_t size, const char *source, const Layout *l)
{
    for (int i = 0; i < ck->ndims; i++) {
        if (strcmp(ck->dims[i].letter, letter) != 0)
            continue;
        if (ck->dims[i].size == size)
            return 0;
        if (l) {
            PyObject *shape = shape_tuple(l);
            if (!shape)
                return -1;
            PyErr_Format(PyExc_ValueError, "%s: argument '%s' has shape %R, so %s = %lld, but '%s' gave %s = %lld",
                         ck->fn, source, shape, letter, (long long)size, ck->dims[i].arg, letter,
                         (long long)ck->dims[i].size);
            Py_DECREF(shape);
        } else {
            PyErr_Format(PyExc_ValueError, "%s: '%s' gives %s = %lld, but '%s' gave %s = %lld", ck->fn, source, letter,
                         (long long)size, ck->dims[i].arg, letter, (long long)ck->dims[i].size);
        }
        return -1;
    }
    if (ck->ndims == ARG_MAX_DIMS) {
        PyErr_Format(PyExc_RuntimeError, "%s: too many dimension letters", ck->fn);
        return -1;
    }
    snprintf(ck->dims[ck->ndims].letter, sizeof(ck->dims[0].letter), "%s", letter);
    ck->dims[ck->ndims].size = size;
    ck->dims[ck->ndims].arg = source;
    ck->ndims++;
    return 0;
}

int arg_bind(ArgCheck *ck, const char *letter, int64_t size, const char *source)
{
    return bind(ck, letter, size, source, NULL);
}

static void record(ArgCheck *ck, const char *name, const Layout *l, int flags, void **ptr)
{
    ck->arrays[ck->narrays].name = name;
    ck->arrays[ck->narrays].start = l->data;
    ck->arrays[ck->narrays].end = l->data + l->nbytes;
    ck->arrays[ck->narrays].is_out = (flags & ARG_OUT) != 0;
    ck->narrays++;
    *ptr = l->data;
}

static int check_layout(ArgCheck *ck, const char *name, const Layout *l, int flags)
{
    if (!l->contiguous || !l->aligned) {
        PyErr_Format(PyExc_ValueError,
                     "%s: argument '%s' must be C-contiguous and aligned (peftc never copies silently; "
                     "pass np.ascontiguousarray(%s))",
                     ck->fn, name, name);
        return -1;
    }
    if ((flags & ARG_OUT) && !l->writeable) {
        PyErr_Format(PyExc_ValueError, "%s: output argument '%s' is read-only", ck->fn, name);
        return -1;
    }
    return 0;
}

/* dims "*": any shape, but every "*" array of one call has the same shape; its size binds P. */
static int check_elementwise(ArgCheck *ck, const char *name, const Layout *l, int flags, void **ptr)
{
    if (check_layout(ck, name, l, flags) < 0)
        return -1;
    if (ck->shape_name) {
        int same = l->ndim == ck->shape_ndim;
        for (int d = 0; same && d < l->ndim; d++)
            same = l->shape[d] == ck->shape_dims[d];
        if (!same) {
            const Layout first = {.ndim = ck->shape_ndim, .shape = ck->shape_dims};
            PyObject *s1 = shape_tuple(l);
            PyObject *s2 = s1 ? shape_tuple(&first) : NULL;
            if (s2)
                PyErr_Format(PyExc_ValueError, "%s: argument '%s' has shape %R but '%s' has shape %R", ck->fn, name, s1,
                             ck->shape_name, s2);
            Py_XDECREF(s1);
            Py_XDECREF(s2);
            return -1;
        }
    } else {
        ck->shape_ndim = l->ndim;
        ck->shape_dims = l->shape;
        ck->shape_name = name;
        int64_t size = 1;
        for (int d = 0; d < l->ndim; d++)
            size *= l->shape[d];
        if (bind(ck, "P", size, name, l) < 0)
            return -1;
    }
    record(ck, name, l, flags, ptr);
    return 0;
}

/* The item type an argument must have, in NumPy's terms and in PEP 3118's. */
typedef struct {
    int typenum;
    const char *name;
    char code; /* struct-module format character */
    Py_ssize_t itemsize;
} ItemType;

static const ItemType F32 = {NPY_FLOAT32, "float32", 'f', 4};
static const ItemType I64 = {NPY_INT64, "int64", 'q', 8};
static const ItemType U16 = {NPY_UINT16, "uint16", 'H', 2};

static int ndarray_layout(ArgCheck *ck, const char *name, PyArrayObject *arr, const ItemType *t, Layout *l)
{
    if (PyArray_TYPE(arr) != t->typenum || !PyArray_ISNOTSWAPPED(arr)) {
        PyObject *shape = PyObject_GetAttrString((PyObject *)arr, "shape");
        if (shape)
            PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be %s in native byte order, got %R with shape %R",
                         ck->fn, name, t->name, (PyObject *)PyArray_DESCR(arr), shape);
        Py_XDECREF(shape);
        return -1;
    }
    *l = (Layout){
        .data = PyArray_BYTES(arr),
        .nbytes = PyArray_NBYTES(arr),
        .ndim = PyArray_NDIM(arr),
        .shape = (const Py_ssize_t *)PyArray_DIMS(arr),
        .contiguous = PyArray_IS_C_CONTIGUOUS(arr),
        .aligned = PyArray_ISALIGNED(arr),
        .writeable = PyArray_ISWRITEABLE(arr),
    };
    return 0;
}

/* A PEP 3118 format names exactly one item of type t in native byte order: the character alone or
 * after '@' (native), '=' or the host's own '<' / '>' / '!' (standard sizes). For int64, "l" also
 * fits where a native long is 8 bytes (NumPy exports int64 as "l" on such hosts). */
static int format_fits(const char *format, Py_ssize_t itemsize, const ItemType *t)
{
    if (!format || itemsize != t->itemsize) /* no format means unsigned bytes */
        return 0;
    int standard = 0;
    if (format[0] == '@') {
        format++;
    } else if (format[0] == '=' || format[0] == (PY_LITTLE_ENDIAN ? '<' : '>') ||
               (!PY_LITTLE_ENDIAN && format[0] == '!')) {
        format++;
        standard = 1;
    }
    if (format[0] == '\0' || format[1] != '\0')
        return 0;
    if (format[0] == t->code)
        return 1;
    return t->code == 'q' && format[0] == 'l' && !standard && sizeof(long) == 8;
}

/* The exporter raised while giving its buffer: name the function and the argument in the message
 * for the exception types a caller expects here, keeping the exporter's error as the cause. */
static void buffer_refused(ArgCheck *ck, const char *name, PyObject *obj)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (!value ||
        !(PyErr_GivenExceptionMatches(type, PyExc_BufferError) || PyErr_GivenExceptionMatches(type, PyExc_TypeError) ||
          PyErr_GivenExceptionMatches(type, PyExc_ValueError))) {
        PyErr_Restore(type, value, tb);
        return;
    }
    if (tb)
        PyException_SetTraceback(value, tb);
    PyErr_Format(type, "%s: argument '%s' (%s) gives no buffer: %S", ck->fn, name, Py_TYPE(obj)->tp_name, value);
    PyObject *type2, *value2, *tb2;
    PyErr_Fetch(&type2, &value2, &tb2);
    PyErr_NormalizeException(&type2, &value2, &tb2);
    if (value2)
        PyException_SetCause(value2, value); /* steals value */
    else
        Py_DECREF(value);
    PyErr_Restore(type2, value2, tb2);
    Py_DECREF(type);
    Py_XDECREF(tb);
}

/* Take obj's buffer into ck (released by arg_release) and describe it. An output asks for a
 * writeable buffer, so that an exporter that tracks writers (Buffer.freeze) knows of this one; an
 * exporter that refuses gives a read-only view instead, which check_layout then refuses in the same
 * order and words as a read-only ndarray. */
static int buffer_layout(ArgCheck *ck, const char *name, PyObject *obj, int flags, const ItemType *t, Layout *l)
{
    Py_buffer *view = &ck->views[ck->nviews];
    int writeable = 0;
    if (flags & ARG_OUT) {
        writeable = PyObject_GetBuffer(obj, view, PyBUF_RECORDS) == 0;
        if (!writeable)
            PyErr_Clear();
    }
    if (!writeable && PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) < 0) {
        buffer_refused(ck, name, obj);
        return -1;
    }
    ck->nviews++;
    const Layout shape_only = {.ndim = view->ndim, .shape = view->shape};
    if (!format_fits(view->format, view->itemsize, t)) {
        PyObject *shape = view->shape || view->ndim == 0 ? shape_tuple(&shape_only) : Py_NewRef(Py_None);
        if (shape)
            PyErr_Format(PyExc_TypeError,
                         "%s: argument '%s' must be %s in native byte order (buffer format '%s'), got %s of "
                         "format '%s' with shape %R",
                         ck->fn, name, t->name, (char[]){t->code, '\0'}, Py_TYPE(obj)->tp_name,
                         view->format ? view->format : "B", shape);
        Py_XDECREF(shape);
        return -1;
    }
    Py_ssize_t count = 1;
    for (int d = 0; view->shape && d < view->ndim; d++)
        count *= view->shape[d];
    if ((view->ndim > 0 && !view->shape) || view->len != count * t->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' (%s) exports %zd bytes that do not match its shape", ck->fn,
                     name, Py_TYPE(obj)->tp_name, view->len);
        return -1;
    }
    *l = (Layout){
        .data = view->buf,
        .nbytes = view->len,
        .ndim = view->ndim,
        .shape = view->shape,
        .contiguous = PyBuffer_IsContiguous(view, 'C'),
        .aligned = (uintptr_t)view->buf % (uintptr_t)t->itemsize == 0,
        .writeable = writeable && !view->readonly,
    };
    return 0;
}

static int check_array(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, const ItemType *t,
                       void **ptr)
{
    *ptr = NULL;
    if (obj == Py_None && (flags & ARG_OPTIONAL))
        return 0;
    if (ck->narrays == ARG_MAX_ARRAYS || ck->nviews == ARG_MAX_ARRAYS) {
        PyErr_Format(PyExc_RuntimeError, "%s: too many array arguments", ck->fn);
        return -1;
    }
    Layout l;
    if (PyArray_Check(obj)) {
        if (ndarray_layout(ck, name, (PyArrayObject *)obj, t, &l) < 0)
            return -1;
    } else if (PyObject_CheckBuffer(obj)) {
        if (buffer_layout(ck, name, obj, flags, t, &l) < 0)
            return -1;
    } else {
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be a numpy.ndarray (or another buffer) of %s, got %s",
                     ck->fn, name, t->name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (strcmp(dims, "*") == 0)
        return check_elementwise(ck, name, &l, flags, ptr);
    /* split "N IC" into letters and compare with the array's rank */
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", dims);
    char *letters[8];
    int nd = 0;
    for (char *tok = strtok(buf, " "); tok && nd < 8; tok = strtok(NULL, " "))
        letters[nd++] = tok;
    if (l.ndim != nd) {
        PyObject *shape = shape_tuple(&l);
        if (shape)
            PyErr_Format(PyExc_ValueError, "%s: argument '%s' must have %d dimension(s) (%s), got shape %R", ck->fn,
                         name, nd, dims, shape);
        Py_XDECREF(shape);
        return -1;
    }
    if (check_layout(ck, name, &l, flags) < 0)
        return -1;
    for (int d = 0; d < nd; d++)
        if (bind(ck, letters[d], (int64_t)l.shape[d], name, &l) < 0)
            return -1;
    record(ck, name, &l, flags, ptr);
    return 0;
}

int arg_f32(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, float **ptr)
{
    return check_array(ck, name, obj, dims, flags, &F32, (void **)ptr);
}

int arg_i64(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, int64_t **ptr)
{
    return check_array(ck, name, obj, dims, flags, &I64, (void **)ptr);
}

int arg_u16(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, uint16_t **ptr)
{
    return check_array(ck, name, obj, dims, flags, &U16, (void **)ptr);
}

int arg_workspace(const ArgCheck *ck, int64_t need)
{
    const int64_t have = arg_dim(ck, "W");
    if (need <= 0 || have >= need)
        return 0;
    if (have < 0)
        PyErr_Format(PyExc_ValueError, "%s: 'work' is None, needs %lld floats", ck->fn, (long long)need);
    else
        PyErr_Format(PyExc_ValueError, "%s: 'work' has %lld floats, needs %lld", ck->fn, (long long)have,
                     (long long)need);
    return -1;
}

int arg_overlap(const ArgCheck *a, const ArgCheck *b, const char **name_a, const char **name_b)
{
    for (int i = 0; i < a->narrays; i++) {
        if (!a->arrays[i].is_out || a->arrays[i].start == a->arrays[i].end)
            continue;
        for (int j = 0; j < b->narrays; j++) {
            if ((a == b && i == j) || b->arrays[j].start == b->arrays[j].end)
                continue;
            if (a->arrays[i].start < b->arrays[j].end && b->arrays[j].start < a->arrays[i].end) {
                *name_a = a->arrays[i].name;
                *name_b = b->arrays[j].name;
                return 1;
            }
        }
    }
    return 0;
}

int arg_no_alias(ArgCheck *ck)
{
    const char *out, *other;
    if (!arg_overlap(ck, ck, &out, &other))
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: output argument '%s' overlaps argument '%s' in memory", ck->fn, out, other);
    return -1;
}

int arg_probability(const char *fn, const char *name, double p)
{
    if (p >= 0.0 && p < 1.0)
        return 0;
    char text[64];
    snprintf(text, sizeof(text), "%g", p);
    PyErr_Format(PyExc_ValueError, "%s: argument '%s' must be in [0, 1), got %s", fn, name, text);
    return -1;
}

PyObject *arg_status_error(const char *fn, peftc_status st)
{
    switch (st) {
    case PEFTC_ERR_SIZE:
        PyErr_Format(PyExc_ValueError, "%s: a size is negative or exceeds the 32-bit BLAS limit", fn);
        break;
    case PEFTC_ERR_ARG:
        PyErr_Format(PyExc_ValueError, "%s: a scalar argument is outside its domain", fn);
        break;
    case PEFTC_ERR_LABEL:
        PyErr_Format(PyExc_ValueError, "%s: 'labels' holds a value outside [0, C) that is not ignore_index", fn);
        break;
    case PEFTC_ERR_LAPACK:
        PyErr_Format(PyExc_RuntimeError, "%s: LAPACK reported a failure", fn);
        break;
    case PEFTC_ERR_NONFINITE:
        PyErr_Format(PyExc_ValueError, "%s: input holds NaN or Inf", fn);
        break;
    default:
        PyErr_Format(PyExc_RuntimeError, "%s: unknown status %d", fn, (int)st);
    }
    return NULL;
}
