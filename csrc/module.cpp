// The ddpm_fast operator library (schemas in op_schemas.h) and the Python module ddpm_fast._C.
// Backends register their kernels in their own files (csrc/cpu/*.cpp, and csrc/cuda/bindings.cpp
// in the separate CUDA library) with STABLE_TORCH_LIBRARY_IMPL, and the op files of
// ddpm_fast/ops/ add the fake (meta) kernels and autograd formulas.
//
// Built on torch's stable ABI and Python's limited API (3.10), so one build loads in every torch
// from 2.10 on and every CPython from 3.10 on: this file uses only the limited API.
#include <Python.h>

#include "cpu/isa.h"
#include "op_schemas.h"

namespace {

// _C.cpu_isa(): the instruction-set level the CPU kernels run at ("avx512", "avx2", "default").
PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(ddpm_fast::cpu_isa_name(ddpm_fast::active_cpu_isa())); }

// _C.supported_cpu_isas(): the levels this processor runs, baseline first.
PyObject* supported_cpu_isas(PyObject*, PyObject*) {
  const auto levels = ddpm_fast::supported_cpu_isas();
  PyObject* names = PyTuple_New(static_cast<Py_ssize_t>(levels.size()));
  for (size_t i = 0; names != nullptr && i < levels.size(); ++i) {
    PyObject* name = PyUnicode_FromString(ddpm_fast::cpu_isa_name(levels[i]));
    if (name == nullptr || PyTuple_SetItem(names, static_cast<Py_ssize_t>(i), name) < 0) {  // steals name
      Py_DECREF(names);
      return nullptr;
    }
  }
  return names;
}

// _C.set_cpu_isa(name): runs the CPU kernels at that level from now on; ValueError if unknown
// or unsupported here.
PyObject* set_cpu_isa(PyObject*, PyObject* name) {
  Py_ssize_t length = 0;
  const char* text = PyUnicode_AsUTF8AndSize(name, &length);
  if (text == nullptr) return nullptr;
  const std::string problem = ddpm_fast::set_active_cpu_isa(std::string(text, length));
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
// static STABLE_TORCH_LIBRARY registrations (the pytorch/extension-cpp pattern). Its attribute
// `intra_op_parallel` says whether the kernels' parallel loops run on torch's intra-op thread
// pool: they call torch::stable::parallel_for, which is torch's own at::parallel_for, so always.
// `cpu_isa_problem` says why DDPM_FAST_CPU_ISA was not followed (or is None), and the functions
// above choose the CPU kernels' instruction set.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  const std::string& problem = ddpm_fast::cpu_isa_environment_problem();
  PyObject* problem_value = problem.empty() ? Py_NewRef(Py_None) : PyUnicode_FromString(problem.c_str());
  if (PyModule_AddObject(module, "intra_op_parallel", Py_NewRef(Py_True)) < 0 ||
      PyModule_AddObject(module, "cpu_isa_problem", problem_value) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

STABLE_TORCH_LIBRARY(ddpm_fast, m) { ddpm_fast::define_op_schemas(m); }
