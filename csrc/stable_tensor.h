// What the bindings need from torch beyond torch/csrc/stable/ops.h, written on the stable ABI
// (TORCH_TARGET_VERSION 2.10): error checks with plain messages, printing of shapes, dtypes and
// devices, the layout predicates of at::Tensor, and the two elementwise ops ops.h lacks.
//
// The stable ABI has, and what stands in for the rest:
// - no TORCH_CHECK (c10::Error): DDPM_CHECK throws std::runtime_error, which reaches Python as
//   RuntimeError with just our message (STD_TORCH_CHECK would prefix the C++ function, file and
//   line to every user-facing error);
// - no operator<< for shapes and devices: shape_string and device_string;
// - no is_non_overlapping_and_dense or is_contiguous(memory_format): computed from the strides;
// - no mul or add in ops.h: mul calls aten::mul.Tensor through torch_call_dispatcher (the stable
//   C entry point ops.h itself uses, with Tensor arguments only), add is ops.h's subtract with
//   alpha = -1;
// - no index_select: the CPU kernels gather their per-sample table rows in plain loops, the CUDA
//   kernels index the tables on the device as before.
#pragma once
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ddpm_fast {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using MemoryFormat = torch::headeronly::MemoryFormat;
using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream message;
  (message << ... << args);
  throw std::runtime_error(message.str());
}

// Throws RuntimeError(the message) unless cond holds.
#define DDPM_CHECK(cond, ...)                    \
  do {                                           \
    if (!(cond)) ::ddpm_fast::fail(__VA_ARGS__); \
  } while (false)

// "[2, 3, 4]", as torch prints a size.
inline std::string shape_string(IntArrayRef sizes) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << "]";
  return out.str();
}

// "cpu" or "cuda:0", as torch prints a device.
inline std::string device_string(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  std::ostringstream out;
  out << (t.is_cuda() ? "cuda" : "device") << ":" << t.get_device_index();
  return out.str();
}

inline bool same_values(IntArrayRef a, IntArrayRef b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

inline bool same_device(const Tensor& a, const Tensor& b) {
  return a.is_cpu() == b.is_cpu() && a.is_cuda() == b.is_cuda() && a.get_device_index() == b.get_device_index();
}

inline bool is_floating(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// Accumulation dtype of the kernels' statistics and workspaces: float64 for float64, float32
// for every other floating dtype (float32, float16, bfloat16).
inline ScalarType acc_dtype(const Tensor& x) {
  return x.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// at::Tensor::is_non_overlapping_and_dense: the elements fill [0, numel) of the storage from
// the first, each once, in some order of the dimensions.
inline bool is_non_overlapping_and_dense(const Tensor& t) {
  const int64_t n = t.dim();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {  // as ATen: size < 2 last
    if (t.size(a) < 2) return false;
    if (t.size(b) < 2) return true;
    return t.stride(a) < t.stride(b);
  });
  int64_t expected = 1;
  for (int64_t d : order) {
    if (t.size(d) == 1) continue;
    if (t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// at::Tensor::is_contiguous(ChannelsLast) for a 4-D tensor: strides of an (N, H, W, C) array.
inline bool is_channels_last_contiguous(const Tensor& t) {
  if (t.dim() != 4) return false;
  int64_t expected = 1;
  for (int64_t d : {1, 3, 2, 0}) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// t itself when it is already dense in `format`, else a copy that is (torch::stable::contiguous,
// which always goes through the dispatcher: a few microseconds that the per-step ops, called on
// already-contiguous tensors, need not pay).
inline Tensor as_contiguous(const Tensor& t, MemoryFormat format = MemoryFormat::Contiguous) {
  const bool dense = format == MemoryFormat::ChannelsLast ? is_channels_last_contiguous(t) : t.is_contiguous();
  return dense ? t : torch::stable::contiguous(t, format);
}

// t itself when it already has `dtype`, else a converted copy (sparing the dispatcher call).
inline Tensor as_dtype(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype);
}

// A new uninitialised tensor with `like`'s device and the given sizes, dtype and memory format.
inline Tensor empty(IntArrayRef sizes, const Tensor& like, ScalarType dtype,
                    MemoryFormat format = MemoryFormat::Contiguous) {
  return torch::stable::empty(sizes, dtype, std::nullopt, like.device(), std::nullopt, format);
}

inline Tensor zeros(IntArrayRef sizes, const Tensor& like, ScalarType dtype) {
  return torch::stable::new_zeros(like, sizes, dtype);
}

// a * b, broadcasting (aten::mul.Tensor).
inline Tensor mul(const Tensor& a, const Tensor& b) {
  std::array<StableIValue, 2> stack{torch::stable::detail::from(a), torch::stable::detail::from(b)};
  // TORCH_ERROR_CODE_CHECK, not STABLE_TORCH_ERROR_CODE_CHECK: the latter is torch 2.13's and
  // broke the build against torch 2.11; for a 2.10 target 2.13 defines it as this one anyway.
  TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::mul", "Tensor", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

// a + b, broadcasting: a - (-1) * b.
inline Tensor add(const Tensor& a, const Tensor& b) { return torch::stable::subtract(a, b, -1.0); }

}  // namespace ddpm_fast
