// dispatch_floating: runs f.template operator()<T>() with T the C++ type of a float32 or float64
// tensor, the dtypes of the CPU kernels. It stands in for AT_DISPATCH_FLOATING_TYPES, which is not
// on the stable ABI; a two-case switch with a templated lambda reads plainer than the header-only
// THO_DISPATCH macros, and its error names the op.
#pragma once
#include "../stable_tensor.h"
#include "storage.h"

namespace ddpm_fast {

template <typename F>
void dispatch_floating(ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case ScalarType::Float: f.template operator()<float>(); break;
    case ScalarType::Double: f.template operator()<double>(); break;
    default: fail(op, ": the CPU kernels take float32 or float64, got ", dtype);
  }
}

// dispatch_floating plus bfloat16, as BFloat16Bits (storage.h), for the kernels written for a
// storage type.
template <typename F>
void dispatch_floating_and_bf16(ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case ScalarType::Float: f.template operator()<float>(); break;
    case ScalarType::Double: f.template operator()<double>(); break;
    case ScalarType::BFloat16: f.template operator()<BFloat16Bits>(); break;
    default: fail(op, ": the CPU kernels take float32, float64 or bfloat16, got ", dtype);
  }
}

// A tensor's data as storage type S, the type the caller dispatched its dtype to.
template <typename S>
const S* data(const Tensor& t) {
  return static_cast<const S*>(t.const_data_ptr());
}
template <typename S>
S* mutable_data(const Tensor& t) {
  return static_cast<S*>(t.mutable_data_ptr());
}

}  // namespace ddpm_fast
