/* args.h: argument checking shared by every wrapper in csrc/python/.
 *
 * Each wrapper does the same five steps: parse, validate, release the GIL, call, map the status.
 * Validation goes through an ArgCheck: every array argument is checked for dtype, C-contiguity,
 * alignment and (for outputs) writeability, and each of its dimensions is bound to a letter
 * ("N IC"); a letter seen twice must have the same size. Outputs must not overlap any other
 * argument. Errors name the function, the argument and the shapes involved. Nothing is copied or
 * converted.
 *
 * An array argument is a numpy.ndarray (read through the NumPy C API) or any other PEP 3118
 * exporter of the same item type (memoryview, array.array, peftc.functional.Buffer, ...). The
 * ArgCheck holds the buffer views it took until arg_release, so the exporter can neither free nor
 * resize the memory while the kernel runs without the GIL. Declare it with ARG_CHECK, which
 * releases them when the wrapper returns, on every path. */
#ifndef PEFTC_PY_ARGS_H
#define PEFTC_PY_ARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL peftc_ARRAY_API
#ifndef PEFTC_IMPORT_ARRAY_HERE
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>
#include <stdint.h>

#include "../peftc.h"

#define ARG_MAX_DIMS 16
#define ARG_MAX_ARRAYS 24

enum { ARG_IN = 0, ARG_OUT = 1, ARG_OPTIONAL = 2 };

typedef struct {
    const char *fn;
    int ndims;
    struct {
        char letter[8];
        int64_t size;
        const char *arg;
    } dims[ARG_MAX_DIMS];
    int narrays;
    struct {
        const char *name;
        const char *start;
        const char *end;
        int is_out;
    } arrays[ARG_MAX_ARRAYS];
    /* the shape of the first "*" (elementwise) array: its ndarray's or its view's, so valid as
     * long as the call runs */
    int shape_ndim;
    const Py_ssize_t *shape_dims;
    const char *shape_name;
    int nviews;
    Py_buffer views[ARG_MAX_ARRAYS]; /* the buffers taken from non-ndarray arguments */
} ArgCheck;

/* Release the buffer views the check holds (each exactly once); the check can then be reused. */
void arg_release(ArgCheck *ck);
/* `ARG_CHECK(ck, "linear_forward");` declares a zeroed ArgCheck that arg_release runs on when the
 * wrapper returns, whichever return that is. */
#define ARG_CHECK(name, fn_name) ArgCheck name __attribute__((cleanup(arg_release))) = {.fn = (fn_name)}
/* Start a fresh check (one holding no views: zeroed, or released). */
void arg_init(ArgCheck *ck, const char *fn);
/* Check a float32 array (an ndarray, or a buffer of format "f") whose dimensions are named by `dims` ("N IC"; "" for a
 * 0-d array; "*" for any shape shared by all "*" arrays of the call, whose total size binds the letter P). flags:
 * ARG_OUT for writeable outputs, ARG_OPTIONAL to accept None (then *ptr = NULL). */
int arg_f32(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, float **ptr);
/* the same for an int64 array (an ndarray, or a buffer of format "q", or "l" where long is 8 bytes) */
int arg_i64(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, int64_t **ptr);
/* the same for a uint16 array (an ndarray, or a buffer of format "H"): bf16 values (bf16_gemm.h) */
int arg_u16(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, uint16_t **ptr);
/* The size bound to a letter, or -1 when no argument named it. */
int64_t arg_dim(const ArgCheck *ck, const char *letter);
/* Bind a letter to a size that comes from a scalar argument rather than an array. */
int arg_bind(ArgCheck *ck, const char *letter, int64_t size, const char *source);
/* The scratch array bound to the letter W ("work") holds at least `need` floats (or need is 0). */
int arg_workspace(const ArgCheck *ck, int64_t need);
/* After all arrays: fail if any output overlaps another argument. */
int arg_no_alias(ArgCheck *ck);
/* 1 when an output array of a overlaps an array of b (another array, when a == b), naming the pair */
int arg_overlap(const ArgCheck *a, const ArgCheck *b, const char **name_a, const char **name_b);
/* Map a non-OK status to a Python exception; returns NULL so wrappers can `return`. */
PyObject *arg_status_error(const char *fn, peftc_status st);
int arg_probability(const char *fn, const char *name, double p);

/* Add peftc._C.Buffer (buffer.c), C-owned memory lent through the buffer protocol, to the module. */
int peftc_py_add_buffer_type(PyObject *module);

#endif
