/* module.c: the peftc._C extension module. Holds no kernels and no wrappers: each csrc/python/py_*.c
 * file exports one method table, added here. The module keeps no mutable state. */
#define PEFTC_IMPORT_ARRAY_HERE
#include "args.h"

/* one method table per section of peftc.h, in the header's order */
extern PyMethodDef peftc_py_linear_lora_methods[];
extern PyMethodDef peftc_py_bf16_methods[];
extern PyMethodDef peftc_py_adapters_methods[];
extern PyMethodDef peftc_py_encoder_methods[];
extern PyMethodDef peftc_py_cnn_methods[];
extern PyMethodDef peftc_py_tta_methods[];
extern PyMethodDef peftc_py_fscil_methods[];
extern PyMethodDef peftc_py_distill_methods[];
extern PyMethodDef peftc_py_eva_methods[];
extern PyMethodDef peftc_py_optim_methods[];
extern PyMethodDef peftc_py_random_methods[];
extern PyMethodDef peftc_py_blas_methods[];
extern PyMethodDef peftc_py_lifelong_methods[];

static PyMethodDef *const method_tables[] = {
    peftc_py_linear_lora_methods, /* linear layer and LoRA */
    peftc_py_bf16_methods,        /* the bf16 frozen linear layer (bf16_gemm.h) */
    peftc_py_adapters_methods,    /* adapters beyond LoRA */
    peftc_py_encoder_methods,     /* transformer encoder ops */
    peftc_py_cnn_methods,         /* CNN ops */
    peftc_py_tta_methods,         /* test-time adaptation */
    peftc_py_fscil_methods,       /* few-shot class-incremental learning */
    peftc_py_distill_methods,     /* data-free distillation losses */
    peftc_py_eva_methods,         /* EVA */
    peftc_py_optim_methods,       /* optimizers and the training loss */
    peftc_py_random_methods,      /* random numbers and dropout */
    peftc_py_blas_methods,        /* BLAS thread settings (blas.h) */
    peftc_py_lifelong_methods,    /* lifelong data selection */
};

static struct PyModuleDef moduledef = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "peftc._C",
    .m_doc = "peftc's C kernels (see peftc.functional for the documented API)",
    .m_size = 0,
};

PyMODINIT_FUNC PyInit__C(void)
{
    import_array();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    for (size_t i = 0; i < sizeof(method_tables) / sizeof(method_tables[0]); i++) {
        if (PyModule_AddFunctions(m, method_tables[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    if (peftc_py_add_buffer_type(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
