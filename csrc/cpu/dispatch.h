// dispatch_floating: runs f.template operator()<T>() with T the C++ type of a float32 or float64
// tensor, the dtypes of the CPU kernels. It stands in for AT_DISPATCH_FLOATING_TYPES, which is not
// on the stable ABI; a two-case switch with a templated lambda reads plainer than the header-only
// THO_DISPATCH macros, and its error names the op.
#pragma once
#include "../stable_tensor.h"

namespace ddpm_fast {

template <typename F>
void dispatch_floating(ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case ScalarType::Float: f.template operator()<float>(); break;
    case ScalarType::Double: f.template operator()<double>(); break;
    default: fail(op, ": the CPU kernels take float32 or float64, got ", dtype);
  }
}

}  // namespace ddpm_fast
