// The ddpm_fast operator library (schemas in op_schemas.h). Backends register their kernels in
// their own files (csrc/cpu/*.cpp, csrc/cuda/*.cpp) with TORCH_LIBRARY_IMPL, and
// ddpm_fast/ops.py adds the fake (meta) kernels and autograd formulas.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "op_schemas.h"

extern "C" {
// An importable module `ddpm_fast._C`: importing it loads this shared library, which runs the
// static TORCH_LIBRARY registrations below (the pytorch/extension-cpp pattern). Its one
// attribute, `intra_op_parallel`, says whether at::parallel_for in these kernels really runs
// on several threads: with torch's OpenMP backend it is an inline `omp parallel` that a build
// without -fopenmp silently compiles as a serial loop.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
#ifdef INTRA_OP_PARALLEL
  const long parallel = 1;
#else
  const long parallel = 0;
#endif
  if (module != nullptr && PyModule_AddObject(module, "intra_op_parallel", PyBool_FromLong(parallel)) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(ddpm_fast, m) { ddpm_fast::define_op_schemas(m); }
