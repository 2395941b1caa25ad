// Input checks and layout helpers shared by the CPU and CUDA bindings: each check names the op,
// the parameter and what was expected, so a bad call fails with a message a user can act on.
#pragma once
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include "stable_tensor.h"

namespace ddpm_fast {

inline void check_same_layout(const char* op, const Tensor& ref, const Tensor& other,
                              const char* ref_name, const char* name) {
  DDPM_CHECK(same_values(other.sizes(), ref.sizes()), op, ": ", name, " must have the shape of ", ref_name,
              " ", shape_string(ref.sizes()), ", got ", shape_string(other.sizes()));
  DDPM_CHECK(other.scalar_type() == ref.scalar_type(), op, ": ", name, " must have ", ref_name,
              "'s dtype ", ref.scalar_type(), ", got ", other.scalar_type());
  DDPM_CHECK(same_device(other, ref), op, ": ", name, " must be on ", ref_name,
              "'s device ", device_string(ref), ", got ", device_string(other));
}

// True when x is channels_last and not also plainly contiguous (C = 1 or H = W = 1 are both).
inline bool is_channels_last_only(const Tensor& x) {
  return !x.is_contiguous() && is_channels_last_contiguous(x);
}

// The one per-sample layout rule, of every per-sample kernel (q_sample and sampler_update, CPU
// and CUDA). They read sample b as the flat range [b * per_sample, (b + 1) * per_sample) of every
// input and output, which holds for contiguous (NCHW) and channels_last tensors, both with the
// batch outermost. So they compute, and return, channels_last when x is channels_last and not
// also contiguous (is_channels_last_only) and every present input in `others` (nullptr: absent)
// has exactly x's strides; contiguous otherwise (views, mixed layouts, a dense tensor whose batch
// dimension is not outermost), copying the inputs that are not already so. Python's twin, for
// the fake kernels: per_sample_format in ddpm_fast/ops/layout.py.
inline MemoryFormat per_sample_format(const Tensor& x, std::initializer_list<const Tensor*> others) {
  if (!is_channels_last_only(x)) return MemoryFormat::Contiguous;
  for (const Tensor* other : others) {
    if (other != nullptr && !same_values(other->strides(), x.strides())) return MemoryFormat::Contiguous;
  }
  return MemoryFormat::ChannelsLast;
}

// The tensor of an optional input, or nullptr when absent (for per_sample_format).
inline const Tensor* present(const std::optional<Tensor>& t) { return t.has_value() ? &*t : nullptr; }

// An optional input in `format` (see as_contiguous), or nullopt.
inline std::optional<Tensor> in_format(const std::optional<Tensor>& t, MemoryFormat format) {
  return t.has_value() ? std::optional<Tensor>(as_contiguous(*t, format)) : std::nullopt;
}

inline void check_timesteps(const char* op, const Tensor& x, const Tensor& t,
                            std::initializer_list<const Tensor*> tables) {
  DDPM_CHECK(x.dim() >= 1, op, ": expected a batched input, got a 0-D tensor");
  DDPM_CHECK(t.dim() == 1 && t.size(0) == x.size(0), op, ": t must have shape (",
              x.size(0), ",), one timestep per sample, got ", shape_string(t.sizes()));
  DDPM_CHECK(t.scalar_type() == ScalarType::Long, op, ": t must be int64, got ", t.scalar_type());
  DDPM_CHECK(same_device(t, x), op, ": t must be on ", device_string(x), ", got ", device_string(t));
  const int64_t T = (*tables.begin())->numel();
  for (const Tensor* table : tables) {
    DDPM_CHECK(table->dim() == 1 && table->numel() == T, op,
                ": schedule tables must all have shape (T,), got ", shape_string(table->sizes()));
    DDPM_CHECK(same_device(*table, x), op, ": schedule tables must be on ", device_string(x),
                ", got ", device_string(*table));
    DDPM_CHECK(table->scalar_type() == ScalarType::Float || table->scalar_type() == x.scalar_type(),
                op, ": schedule tables must be float32 or ", x.scalar_type(), ", got ",
                table->scalar_type());
  }
}

// Activation codes shared by every backend.
enum class Act : int { kNone = 0, kSilu = 1, kGelu = 2 };

inline Act parse_act(std::string_view act) {
  if (act == "none") return Act::kNone;
  if (act == "silu") return Act::kSilu;
  if (act == "gelu") return Act::kGelu;
  DDPM_CHECK(false, "group_norm_act: act must be 'none', 'silu' or 'gelu', got '", act, "'");
}

inline void check_group_norm_args(const Tensor& x, int64_t num_groups,
                                  const std::optional<Tensor>& weight,
                                  const std::optional<Tensor>& bias,
                                  const std::optional<Tensor>& scale,
                                  const std::optional<Tensor>& shift) {
  DDPM_CHECK(x.dim() == 4, "group_norm_act: expected a 4-D NCHW input, got ", x.dim(), "-D");
  DDPM_CHECK(is_floating(x.scalar_type()),
              "group_norm_act: x must be a floating-point tensor, got ", x.scalar_type());
  const int64_t C = x.size(1);
  DDPM_CHECK(num_groups >= 1 && C % num_groups == 0, "group_norm_act: num_groups=", num_groups,
              " must divide the ", C, " channels");
  for (const auto* p : {&weight, &bias}) {
    if (p->has_value()) {
      DDPM_CHECK((*p)->dim() == 1 && (*p)->size(0) == C,
                  "group_norm_act: weight and bias must have shape (", C, ",), got ",
                  shape_string((*p)->sizes()));
      DDPM_CHECK((*p)->scalar_type() == x.scalar_type() && same_device(**p, x),
                  "group_norm_act: weight and bias must match x's dtype and device");
    }
  }
  for (const auto* p : {&scale, &shift}) {
    if (p->has_value()) {
      DDPM_CHECK((*p)->numel() == x.size(0) * C,
                  "group_norm_act: scale and shift must have shape (", x.size(0), ", ", C,
                  "), got ", shape_string((*p)->sizes()));
      DDPM_CHECK((*p)->scalar_type() == x.scalar_type() && same_device(**p, x),
                  "group_norm_act: scale and shift must match x's dtype and device");
    }
  }
}

inline void check_linear_attention_args(const Tensor& qkv, int64_t heads) {
  DDPM_CHECK(qkv.dim() == 4, "linear_attention: expected qkv of shape (B, 3*heads*dim_head, H, W), got ",
              qkv.dim(), "-D");
  DDPM_CHECK(is_floating(qkv.scalar_type()),
              "linear_attention: qkv must be a floating-point tensor, got ", qkv.scalar_type());
  DDPM_CHECK(heads >= 1 && qkv.size(1) % (3 * heads) == 0, "linear_attention: heads=", heads,
              " must divide qkv's ", qkv.size(1), " channels into 3*heads equal parts");
}

inline void check_projected_linear_attention_args(const Tensor& x, const Tensor& w_qkv, int64_t heads) {
  DDPM_CHECK(x.dim() == 4, "projected_linear_attention: expected x of shape (B, C, H, W), got ", x.dim(), "-D");
  DDPM_CHECK(is_floating(x.scalar_type()),
              "projected_linear_attention: x must be a floating-point tensor, got ", x.scalar_type());
  DDPM_CHECK(w_qkv.scalar_type() == x.scalar_type(), "projected_linear_attention: w_qkv must have x's dtype ",
              x.scalar_type(), ", got ", w_qkv.scalar_type());
  const bool one_by_one = w_qkv.dim() == 2 || (w_qkv.dim() == 4 && w_qkv.size(2) == 1 && w_qkv.size(3) == 1);
  DDPM_CHECK(one_by_one && w_qkv.size(1) == x.size(1),
              "projected_linear_attention: expected w_qkv of shape (3*heads*dim_head, ", x.size(1),
              ", 1, 1), got ", shape_string(w_qkv.sizes()));
  DDPM_CHECK(heads >= 1 && w_qkv.size(0) % (3 * heads) == 0, "projected_linear_attention: heads=", heads,
              " must divide w_qkv's ", w_qkv.size(0), " output channels into 3*heads equal parts");
}

// Every entry of the int64 CPU index tensor `t` (named `name`) lies in [0, n). CPU kernels only:
// on a GPU this would be a host sync, so the CUDA kernels turn an out-of-range index into NaN.
inline void check_range(const char* op, const char* name, const Tensor& t_in, int64_t n) {
  const Tensor t = as_contiguous(t_in);
  const int64_t* tp = t.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    DDPM_CHECK(tp[i] >= 0 && tp[i] < n, op, ": ", name, "[", i, "]=", tp[i], " lies outside [0, ", n, ")");
  }
}

}  // namespace ddpm_fast
