/* buffer.c: peftc._C.Buffer, memory the C side allocates and owns, lent to Python through the buffer
 * protocol (PEP 3118) so that np.asarray(buf) and every kernel use it in place.
 *
 * A Buffer holds one 64-byte aligned, zero-filled block of float32, int64 or uint16 (bf16) items in C
 * order. Each buffer view it gives out holds a reference to it and is counted; while any view lives the memory
 * cannot be resized, freed or frozen, so no view ever outlives its memory. freeze() makes the
 * storage read-only for good (later views are read-only; a writeable one is refused). free() gives
 * the memory back early; a freed Buffer refuses to give views, so a kernel called with it raises.
 * Holds no kernels; the module keeps the type as an attribute and no other state. */
#include "args.h"

#include <stdlib.h>
#include <string.h>

#define BUFFER_ALIGN 64
#define BUFFER_MAX_DIMS 8

typedef struct {
    PyObject_HEAD char *data; /* BUFFER_ALIGN-aligned, nbytes long (rounded up); NULL once freed */
    Py_ssize_t nbytes;        /* product of shape times itemsize */
    int typenum;              /* NPY_FLOAT32, NPY_INT64 or NPY_UINT16 */
    int readonly;             /* frozen: views are read-only from then on */
    Py_ssize_t exports;       /* views given out and not yet released */
    int ndim;
    Py_ssize_t shape[BUFFER_MAX_DIMS];
    Py_ssize_t strides[BUFFER_MAX_DIMS];
} BufferObject;

static Py_ssize_t itemsize_of(int typenum)
{
    return typenum == NPY_INT64 ? 8 : typenum == NPY_UINT16 ? 2 : 4;
}

/* Parse an int or a sequence of ints >= 0 into shape; the number of dimensions, or -1. */
static int parse_shape(PyObject *obj, Py_ssize_t *shape)
{
    PyObject *seq = PyIndex_Check(obj) ? PyTuple_Pack(1, obj) : PySequence_Tuple(obj);
    if (!seq) {
        PyErr_Format(PyExc_TypeError, "Buffer: shape must be an int or a sequence of ints, got %s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const Py_ssize_t ndim = PyTuple_GET_SIZE(seq);
    if (ndim > BUFFER_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "Buffer: at most %d dimensions, got shape %R", BUFFER_MAX_DIMS, obj);
        goto fail;
    }
    for (Py_ssize_t d = 0; d < ndim; d++) {
        shape[d] = PyNumber_AsSsize_t(PyTuple_GET_ITEM(seq, d), PyExc_OverflowError);
        if (shape[d] == -1 && PyErr_Occurred())
            goto fail;
        if (shape[d] < 0) {
            PyErr_Format(PyExc_ValueError, "Buffer: sizes must be >= 0, got shape %R", obj);
            goto fail;
        }
    }
    Py_DECREF(seq);
    return (int)ndim;
fail:
    Py_DECREF(seq);
    return -1;
}

/* Zero-filled aligned storage for ndim sizes of typenum items: sets data, nbytes, shape, strides. */
static int allocate(BufferObject *self, int ndim, const Py_ssize_t *shape, PyObject *shape_obj)
{
    const Py_ssize_t itemsize = itemsize_of(self->typenum);
    Py_ssize_t nbytes = itemsize;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] != 0 && nbytes > (PY_SSIZE_T_MAX - BUFFER_ALIGN) / shape[d]) {
            PyErr_Format(PyExc_ValueError, "Buffer: shape %R is too large", shape_obj);
            return -1;
        }
        nbytes *= shape[d];
    }
    /* aligned_alloc wants a multiple of the alignment; a zero-size Buffer still owns a block so that
     * data == NULL means freed and nothing else */
    const size_t alloc = ((size_t)nbytes + BUFFER_ALIGN - 1) / BUFFER_ALIGN * BUFFER_ALIGN;
    char *data = aligned_alloc(BUFFER_ALIGN, alloc > 0 ? alloc : BUFFER_ALIGN);
    if (!data) {
        PyErr_NoMemory();
        return -1;
    }
    memset(data, 0, alloc);
    free(self->data);
    self->data = data;
    self->nbytes = nbytes;
    self->ndim = ndim;
    Py_ssize_t stride = itemsize;
    for (int d = ndim - 1; d >= 0; d--) {
        self->shape[d] = shape[d];
        self->strides[d] = stride;
        stride *= shape[d];
    }
    return 0;
}

static int type_from_dtype(PyObject *dtype, int *typenum)
{
    PyArray_Descr *descr = NULL;
    if (!PyArray_DescrConverter(dtype, &descr))
        return -1;
    /* 'q' and 'l' are distinct type numbers of the same int64 */
    *typenum = PyArray_EquivTypenums(descr->type_num, NPY_FLOAT32)  ? NPY_FLOAT32
               : PyArray_EquivTypenums(descr->type_num, NPY_INT64)  ? NPY_INT64
               : PyArray_EquivTypenums(descr->type_num, NPY_UINT16) ? NPY_UINT16
                                                                    : NPY_NOTYPE;
    const int ok = *typenum != NPY_NOTYPE && PyArray_ISNBO(descr->byteorder);
    if (!ok)
        PyErr_Format(PyExc_TypeError, "Buffer: dtype must be float32, int64 or uint16 in native byte order, got %R",
                     (PyObject *)descr);
    Py_DECREF(descr);
    return ok ? 0 : -1;
}

static PyObject *buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"shape", "dtype", "readonly", NULL};
    PyObject *o_shape, *o_dtype = NULL;
    int readonly = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$p:Buffer", keywords, &o_shape, &o_dtype, &readonly))
        return NULL;
    Py_ssize_t shape[BUFFER_MAX_DIMS];
    const int ndim = parse_shape(o_shape, shape);
    int typenum = NPY_FLOAT32;
    if (ndim < 0 || (o_dtype && type_from_dtype(o_dtype, &typenum) < 0))
        return NULL;
    BufferObject *self = (BufferObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->typenum = typenum;
    if (allocate(self, ndim, shape, o_shape) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->readonly = readonly;
    return (PyObject *)self;
}

static void buffer_dealloc(BufferObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    free(self->data); /* no view is left: each holds a reference */
    type->tp_free(self);
    Py_DECREF(type);
}

static int buffer_getbuffer(BufferObject *self, Py_buffer *view, int flags)
{
    view->obj = NULL;
    if (!self->data) {
        PyErr_SetString(PyExc_BufferError, "Buffer: the memory was freed");
        return -1;
    }
    if ((flags & PyBUF_WRITABLE) && self->readonly) {
        PyErr_SetString(PyExc_BufferError, "Buffer: frozen (read-only), no writeable view");
        return -1;
    }
    /* C order only: a Fortran-order request fits when at most one dimension is longer than 1 */
    if ((flags & PyBUF_F_CONTIGUOUS) == PyBUF_F_CONTIGUOUS) {
        int long_dims = 0;
        for (int d = 0; d < self->ndim; d++)
            long_dims += self->shape[d] > 1;
        if (long_dims > 1) {
            PyErr_SetString(PyExc_BufferError, "Buffer: C-ordered, not Fortran-ordered");
            return -1;
        }
    }
    const int nd = (flags & PyBUF_ND) == PyBUF_ND;
    view->buf = self->data;
    view->obj = Py_NewRef(self);
    view->len = self->nbytes;
    view->readonly = self->readonly;
    view->itemsize = itemsize_of(self->typenum);
    view->format = (flags & PyBUF_FORMAT) ? (self->typenum == NPY_INT64    ? "q"
                                             : self->typenum == NPY_UINT16 ? "H"
                                                                           : "f")
                                          : NULL;
    view->ndim = nd ? self->ndim : 1; /* without ND the consumer sees bytes */
    view->shape = nd ? self->shape : NULL;
    view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? self->strides : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    self->exports++;
    return 0;
}

static void buffer_releasebuffer(BufferObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
}

/* BufferError unless no view is exported; `what` names the refused operation */
static int no_exports(const BufferObject *self, const char *what)
{
    if (self->exports == 0)
        return 0;
    PyErr_Format(PyExc_BufferError,
                 "Buffer: cannot %s while %zd view(s) of it are exported (release them first: "
                 "del the arrays or memoryviews made from it)",
                 what, self->exports);
    return -1;
}

static PyObject *buffer_freeze(BufferObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->readonly && no_exports(self, "freeze") < 0)
        return NULL;
    self->readonly = 1;
    Py_RETURN_NONE;
}

static PyObject *buffer_resize(BufferObject *self, PyObject *o_shape)
{
    if (no_exports(self, "resize") < 0)
        return NULL;
    if (!self->data || self->readonly) {
        PyErr_Format(PyExc_BufferError, "Buffer: cannot resize %s storage", self->data ? "frozen" : "freed");
        return NULL;
    }
    Py_ssize_t shape[BUFFER_MAX_DIMS];
    const int ndim = parse_shape(o_shape, shape);
    if (ndim < 0)
        return NULL;
    char *old = self->data;
    const Py_ssize_t old_nbytes = self->nbytes;
    self->data = NULL; /* allocate must not free it: its contents are copied over first */
    if (allocate(self, ndim, shape, o_shape) < 0) {
        self->data = old;
        return NULL;
    }
    memcpy(self->data, old, (size_t)(old_nbytes < self->nbytes ? old_nbytes : self->nbytes));
    free(old);
    Py_RETURN_NONE;
}

static PyObject *buffer_free(BufferObject *self, PyObject *unused)
{
    (void)unused;
    if (no_exports(self, "free") < 0)
        return NULL;
    free(self->data);
    self->data = NULL;
    self->nbytes = 0;
    self->ndim = 1;
    self->shape[0] = 0;
    self->strides[0] = itemsize_of(self->typenum);
    Py_RETURN_NONE;
}

static PyObject *shape_of(const BufferObject *self)
{
    PyObject *shape = PyTuple_New(self->ndim);
    for (int d = 0; shape && d < self->ndim; d++) {
        PyObject *size = PyLong_FromSsize_t(self->shape[d]);
        if (!size)
            Py_CLEAR(shape);
        else
            PyTuple_SET_ITEM(shape, d, size);
    }
    return shape;
}

/* pickle and copy.deepcopy: Buffer(shape, dtype) then __setstate__((contents, readonly)) */
static PyObject *buffer_reduce(BufferObject *self, PyObject *unused)
{
    (void)unused;
    if (!self->data) {
        PyErr_SetString(PyExc_BufferError, "Buffer: cannot copy or pickle freed storage");
        return NULL;
    }
    PyObject *shape = shape_of(self);
    PyObject *dtype = shape ? (PyObject *)PyArray_DescrFromType(self->typenum) : NULL;
    PyObject *contents = dtype ? PyBytes_FromStringAndSize(self->data, self->nbytes) : NULL;
    PyObject *result = contents ? Py_BuildValue("O(OO)(OO)", (PyObject *)Py_TYPE(self), shape, dtype, contents,
                                                self->readonly ? Py_True : Py_False)
                                : NULL;
    Py_XDECREF(shape);
    Py_XDECREF(dtype);
    Py_XDECREF(contents);
    return result;
}

static PyObject *buffer_setstate(BufferObject *self, PyObject *state)
{
    PyObject *contents;
    int readonly;
    if (!PyArg_ParseTuple(state, "O!p:__setstate__", &PyBytes_Type, &contents, &readonly))
        return NULL;
    if (!self->data || self->readonly || PyBytes_GET_SIZE(contents) != self->nbytes) {
        PyErr_Format(PyExc_ValueError, "Buffer.__setstate__: %zd bytes for writeable storage of %zd",
                     PyBytes_GET_SIZE(contents), self->data && !self->readonly ? self->nbytes : (Py_ssize_t)0);
        return NULL;
    }
    if (no_exports(self, "restore its contents") < 0)
        return NULL;
    memcpy(self->data, PyBytes_AS_STRING(contents), (size_t)self->nbytes);
    self->readonly = readonly;
    Py_RETURN_NONE;
}

static PyObject *buffer_repr(BufferObject *self)
{
    PyObject *shape = shape_of(self);
    if (!shape)
        return NULL;
    PyObject *repr = PyUnicode_FromFormat("Buffer(%R, dtype=%s%s)", shape,
                                          self->typenum == NPY_INT64    ? "int64"
                                          : self->typenum == NPY_UINT16 ? "uint16"
                                                                        : "float32",
                                          !self->data      ? ", freed"
                                          : self->readonly ? ", readonly"
                                                           : "");
    Py_DECREF(shape);
    return repr;
}

static PyObject *get_shape(BufferObject *self, void *closure)
{
    (void)closure;
    return shape_of(self);
}

static PyObject *get_dtype(BufferObject *self, void *closure)
{
    (void)closure;
    return (PyObject *)PyArray_DescrFromType(self->typenum);
}

static PyObject *get_nbytes(BufferObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->nbytes);
}

static PyObject *get_readonly(BufferObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->readonly);
}

static PyObject *get_freed(BufferObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->data == NULL);
}

static PyObject *get_exports(BufferObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->exports);
}

static PyGetSetDef buffer_getset[] = {
    {"shape", (getter)get_shape, NULL, "the shape, a tuple of ints ((0,) once freed)", NULL},
    {"dtype", (getter)get_dtype, NULL, "numpy.dtype: float32, int64 or uint16", NULL},
    {"nbytes", (getter)get_nbytes, NULL, "bytes of storage (0 once freed)", NULL},
    {"readonly", (getter)get_readonly, NULL, "True once frozen", NULL},
    {"freed", (getter)get_freed, NULL, "True after free()", NULL},
    {"exports", (getter)get_exports, NULL, "buffer views of this storage alive now", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef buffer_methods[] = {
    {"freeze", (PyCFunction)buffer_freeze, METH_NOARGS,
     "freeze(): make the storage read-only for good. Refused (BufferError) while a view is exported, since "
     "a view taken before could still write."},
    {"resize", (PyCFunction)buffer_resize, METH_O,
     "resize(shape): new zero-filled storage of that shape, keeping the leading bytes of the old contents. "
     "Refused (BufferError) while a view is exported, or when frozen or freed."},
    {"free", (PyCFunction)buffer_free, METH_NOARGS,
     "free(): give the memory back now. Refused (BufferError) while a view is exported; afterwards the "
     "Buffer gives no views (a kernel called with it raises BufferError)."},
    {"__reduce__", (PyCFunction)buffer_reduce, METH_NOARGS, NULL},
    {"__setstate__", (PyCFunction)buffer_setstate, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot buffer_slots[] = {
    {Py_tp_doc, "Buffer(shape, dtype='float32', *, readonly=False)\n--\n\n"
                "Zero-filled, 64-byte aligned C-ordered storage of float32, int64 or uint16 items that the C side "
                "owns and lends out through the buffer protocol: np.asarray(buf) and the kernels use it in "
                "place. While any view of it is alive it cannot be resized, freed or frozen (BufferError), "
                "and each view keeps the Buffer alive. A kernel workspace kept between calls is the typical "
                "use."},
    {Py_tp_new, buffer_new},
    {Py_tp_dealloc, buffer_dealloc},
    {Py_tp_repr, buffer_repr},
    {Py_tp_getset, buffer_getset},
    {Py_tp_methods, buffer_methods},
    {Py_bf_getbuffer, buffer_getbuffer},
    {Py_bf_releasebuffer, buffer_releasebuffer},
    {0, NULL},
};

static PyType_Spec buffer_spec = {
    .name = "peftc._C.Buffer",
    .basicsize = sizeof(BufferObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = buffer_slots,
};

int peftc_py_add_buffer_type(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &buffer_spec, NULL);
    if (!type)
        return -1;
    const int status = PyModule_AddObjectRef(module, "Buffer", type);
    Py_DECREF(type);
    return status;
}
