/* module.c: the peftc._C extension module. Holds no kernels and no wrappers: each csrc/python/py_*.c
 * file exports one method table, added here. The module keeps no mutable state. */
#define PEFTC_IMPORT_ARRAY_HERE
#include "args.h"

extern PyMethodDef peftc_py_lora_methods[];
extern PyMethodDef peftc_py_random_methods[];
extern PyMethodDef peftc_py_train_methods[];
/* CNN kernels */
extern PyMethodDef peftc_py_cnn_methods[];
/* transformer encoder family */
extern PyMethodDef peftc_py_encoder_methods[];
/* Bone / MiSS and Bat */
extern PyMethodDef peftc_py_bone_methods[];
/* SoRA and Hydra adapters */
extern PyMethodDef peftc_py_sora_hydra_methods[];
/* test-time adaptation kernels */
extern PyMethodDef peftc_py_tta_methods[];
/* EVA kernels */
extern PyMethodDef peftc_py_eva_methods[];

static PyMethodDef *const method_tables[] = {
    peftc_py_lora_methods,
    peftc_py_random_methods,
    peftc_py_train_methods,
    /* CNN kernels */
    peftc_py_cnn_methods,
    peftc_py_encoder_methods, /* transformer encoder family */
    /* Bone / MiSS and Bat */
    peftc_py_bone_methods,
    /* SoRA and Hydra adapters */
    peftc_py_sora_hydra_methods,
    /* test-time adaptation kernels */
    peftc_py_tta_methods,
    /* EVA kernels */
    peftc_py_eva_methods,
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
