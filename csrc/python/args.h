/* args.h: argument checking shared by every wrapper in csrc/python/.
 *
 * Each wrapper does the same five steps: parse, validate, release the GIL, call, map the status.
 * Validation goes through an ArgCheck: every array argument is checked for dtype, C-contiguity,
 * alignment and (for outputs) writeability, and each of its dimensions is bound to a letter
 * ("N IC"); a letter seen twice must have the same size. Outputs must not overlap any other
 * argument. Errors name the function, the argument and the shapes involved. Nothing is copied or
 * converted. */
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
    PyArrayObject *shape_of; /* the first "*" (elementwise) array, borrowed */
    const char *shape_name;
} ArgCheck;

void arg_init(ArgCheck *ck, const char *fn);
/* Check a float32 array whose dimensions are named by `dims` ("N IC"; "" for a 0-d array; "*" for
 * any shape shared by all "*" arrays of the call, whose total size binds the letter P).
 * flags: ARG_OUT for writeable outputs, ARG_OPTIONAL to accept None (then *ptr = NULL). */
int arg_f32(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, float **ptr);
int arg_i64(ArgCheck *ck, const char *name, PyObject *obj, const char *dims, int flags, int64_t **ptr);
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

#endif
