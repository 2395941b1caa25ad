// What the real CUDA binding (csrc/cuda/bindings.cpp, built here for CPU tensors) needs around
// it: the op library it registers into, ddpm_fast_emulated, with the very schemas of ddpm_fast
// (on the stable ABI, as in csrc/module.cpp); and torch's C-shim call that gives it the current
// CUDA stream.
#include <torch/csrc/stable/library.h>

#include "emulation_runtime.h"
#include "op_schemas.h"

STABLE_TORCH_LIBRARY(ddpm_fast_emulated, m) { ddpm_fast::define_op_schemas(m); }

extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t /*device_index*/, void** ret_stream) {
  *ret_stream = cuda_emulation::current_stream();
  return 0;
}
