// The ddpm_fast operator library (schemas in op_schemas.h). Backends register their kernels in
// their own files (csrc/cpu/*.cpp, csrc/cuda/*.cpp) with TORCH_LIBRARY_IMPL, and
// ddpm_fast/ops.py adds the fake (meta) kernels and autograd formulas.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "op_schemas.h"

namespace {

// _C.cpu_isa(): the instruction-set level the CPU kernels run at ("avx512", "avx2", "default").
PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(ddpm_fast::cpu_isa_name(ddpm_fast::active_cpu_isa())); }

// _C.supported_cpu_isas(): the levels this processor runs, baseline first.
PyObject* supported_cpu_isas(PyObject*, PyObject*) {
  const auto levels = ddpm_fast::supported_cpu_isas();
  PyObject* names = PyTuple_New(static_cast<Py_ssize_t>(levels.size()));
  for (size_t i = 0; names != nullptr && i < levels.size(); ++i)
    PyTuple_SET_ITEM(names, static_cast<Py_ssize_t>(i), PyUnicode_FromString(ddpm_fast::cpu_isa_name(levels[i])));
  return names;
}

// _C.set_cpu_isa(name): runs the CPU kernels at that level from now on; ValueError if unknown
// or unsupported here.
PyObject* set_cpu_isa(PyObject*, PyObject* name) {
  const char* text = PyUnicode_AsUTF8(name);
  if (text == nullptr) return nullptr;
  const std::string problem = ddpm_fast::set_active_cpu_isa(text);
  if (!problem.empty()) {
    PyErr_SetString(PyExc_ValueError, problem.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction-set level of the CPU kernels."},
    {"supported_cpu_isas", supported_cpu_isas, METH_NOARGS, "The levels this processor runs."},
    {"set_cpu_isa", set_cpu_isa, METH_O, "Run the CPU kernels at this level: avx512, avx2 or default."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
// An importable module `ddpm_fast._C`: importing it loads this shared library, which runs the
// static TORCH_LIBRARY registrations below (the pytorch/extension-cpp pattern). Its attribute
// `intra_op_parallel` says whether at::parallel_for in these kernels really runs on several
// threads: with torch's OpenMP backend it is an inline `omp parallel` that a build without
// -fopenmp silently compiles as a serial loop. `cpu_isa_problem` says why DDPM_FAST_CPU_ISA was
// not followed (or is None), and the functions above choose the CPU kernels' instruction set.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef INTRA_OP_PARALLEL
  const long parallel = 1;
#else
  const long parallel = 0;
#endif
  const std::string& problem = ddpm_fast::cpu_isa_environment_problem();
  PyObject* problem_value = problem.empty() ? Py_NewRef(Py_None) : PyUnicode_FromString(problem.c_str());
  if (PyModule_AddObject(module, "intra_op_parallel", PyBool_FromLong(parallel)) < 0 ||
      PyModule_AddObject(module, "cpu_isa_problem", problem_value) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(ddpm_fast, m) { ddpm_fast::define_op_schemas(m); }
