/* args.c: the validation behind args.h. Holds no kernel calls. */
#include "args.h"

#include <string.h>

void arg_init(ArgCheck *ck, const char *fn)
{
    memset(ck, 0, sizeof(*ck));
    ck->fn = fn;
}

int64_t arg_dim(const ArgCheck *ck, const char *letter)
{
    for (int i = 0; i < ck->ndims; i++)
        if (strcmp(ck->dims[i].letter, letter) == 0)
            return ck->dims[i].size;
    return -1;
}

static int bind(ArgCheck *ck, const char *letter, int64_t size, const char *source, PyArrayObject *arr)
{
    for (int i = 0; i < ck->ndims; i++) {
        if (strcmp(ck->dims[i].letter, letter) != 0)
            continue;
        if (ck->dims[i].size == size)
            return 0;
        if (arr) {
            PyObject *shape = PyObject_GetAttrString((PyObject *)arr, "shape");
            PyErr_Format(PyExc_ValueError,
                         "%s: argument '%s' has shape %R, so %s = %lld, but '%s' gave %s = %lld", ck->fn,
                         source, shape, letter, (long long)size, ck->dims[i].arg, letter,
                         (long long)ck->dims[i].size);
            Py_XDECREF(shape);
        } else {
            PyErr_Format(PyExc_ValueError, "%s: '%s' gives %s = %lld, but '%s' gave %s = %lld", ck->fn, source,
                         letter, (long long)size, ck->dims[i].arg, letter, (long long)ck->dims[i].size);
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

static int record(ArgCheck *ck, const char *name, PyArrayObject *arr, int flags, void **ptr)
{
    if (ck->narrays == ARG_MAX_ARRAYS) {
        PyErr_Format(PyExc_RuntimeError, "%s: too many array arguments", ck->fn);
        return -1;
    }
    const char *start = PyArray_BYTES(arr);
    ck->arrays[ck->narrays].name = name;
    ck->arrays[ck->narrays].start = start;
    ck->arrays[ck->narrays].end = start + PyArray_NBYTES(arr);
    ck->arrays[ck->narrays].is_out = (flags & ARG_OUT) != 0;
    ck->narrays++;
    *ptr = PyArray_DATA(arr);
    return 0;
}

static int check_layout(ArgCheck *ck, const char *name, PyArrayObject *arr, int flags)
{
    if (!PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: argument '%s' must be C-contiguous and aligned (peftc never copies silently; "
                     "pass np.ascontiguousarray(%s))",
                     ck->fn, name, name);
        return -1;
    }
    if ((flags & ARG_OUT) && !PyArray_ISWRITEABLE(arr)) {
        PyErr_Format(PyExc_ValueError, "%s: output argument '%s' is read-only", ck->fn, name);
        return -1;
    }
    return 0;
}

/* dims "*": any shape, but every "*" array of one call has the same shape; its size binds P. */
static int check_elementwise(ArgCheck *ck, const char *name, PyArrayObject *arr, int flags, void **ptr)
{
    if (check_layout(ck, name, arr, flags) < 0)
        return -1;
    if (ck->shape_of) {
        if (!PyArray_SAMESHAPE(arr, ck->shape_of)) {
            PyObject *s1 = PyObject_GetAttrString((PyObject *)arr, "shape");
            PyObject *s2 = PyObject_GetAttrString((PyObject *)ck->shape_of, "shape");
            PyErr_Format(PyExc_ValueError, "%s: argument '%s' has shape %R but '%s' has shape %R", ck->fn, name,
                         s1, ck->shape_name, s2);
            Py_XDECREF(s1);
            Py_XDECREF(s2);
            return -1;
        }
    } else {
        ck->shape_of = arr;
        ck->shape_name = name;
        if (bind(ck, "P", (int64_t)PyArray_SIZE(arr), name, arr) < 0)
            return -1;
    }
    return record(ck, name, arr, flags, ptr);
}

static int check_array(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, int typenum,
                       const char *typename, void **ptr)
{
    *ptr = NULL;
    if (obj == Py_None && (flags & ARG_OPTIONAL))
        return 0;
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be a numpy.ndarray of %s, got %s", ck->fn, name,
                     typename, Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != typenum || !PyArray_ISNOTSWAPPED(arr)) {
        PyObject *shape = PyObject_GetAttrString(obj, "shape");
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be %s in native byte order, got %R with shape %R",
                     ck->fn, name, typename, (PyObject *)PyArray_DESCR(arr), shape);
        Py_XDECREF(shape);
        return -1;
    }
    if (strcmp(dims, "*") == 0)
        return check_elementwise(ck, name, arr, flags, ptr);
    /* split "N IC" into letters and compare with the array's rank */
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", dims);
    char *letters[8];
    int nd = 0;
    for (char *tok = strtok(buf, " "); tok && nd < 8; tok = strtok(NULL, " "))
        letters[nd++] = tok;
    PyObject *shape = PyObject_GetAttrString(obj, "shape");
    if (PyArray_NDIM(arr) != nd) {
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' must have %d dimension(s) (%s), got shape %R", ck->fn,
                     name, nd, dims, shape);
        Py_XDECREF(shape);
        return -1;
    }
    Py_XDECREF(shape);
    if (check_layout(ck, name, arr, flags) < 0)
        return -1;
    for (int d = 0; d < nd; d++)
        if (bind(ck, letters[d], (int64_t)PyArray_DIM(arr, d), name, arr) < 0)
            return -1;
    return record(ck, name, arr, flags, ptr);
}

int arg_f32(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, float **ptr)
{
    return check_array(ck, name, obj, dims, flags, NPY_FLOAT32, "float32", (void **)ptr);
}

int arg_i64(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, int64_t **ptr)
{
    return check_array(ck, name, obj, dims, flags, NPY_INT64, "int64", (void **)ptr);
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
