// CUDA backend of the ddpm_fast ops: input checks, output and workspace allocation, and the
// calls into the launchers of csrc/cuda/*.cu. Compiled by the C++ compiler against torch's stable
// ABI only (built into its own library, ddpm_fast._cuda), with no ATen/cuda header, so it also
// compiles against a CPU-only torch (the compile check).
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../group_norm_grads.h"
#include "../sampler_update.h"
#include "launchers.h"

// torch's stable C shim (torch/csrc/inductor/aoti_torch/c/shim.h, declared there only when
// USE_CUDA is set): the current CUDA stream of a device, as a cudaStream_t.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace ddpm_fast {
namespace {

namespace st = torch::stable;

// Makes a CUDA tensor's device the current one for the launch, as c10::DeviceGuard does. The
// emulation of the tests runs this binding on CPU tensors, which have no device to select.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(const Tensor& t) {
    if (t.is_cuda()) guard_.emplace(t.get_device_index());
  }

 private:
  std::optional<st::accelerator::DeviceGuard> guard_;
};

// The current CUDA stream of t's device, from the C shim: the stable ABI's Stream::nativeHandle()
// needs torch 2.13, and this library targets 2.10.
void* current_stream(const Tensor& t) {
  void* stream = nullptr;
  DDPM_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) == 0,
             "ddpm_fast: could not get the current CUDA stream of ", device_string(t));
  return stream;
}

void check_launch(const char* op, const char* error) {
  DDPM_CHECK(error == nullptr, op, ": CUDA kernel launch failed: ", error);
}

cuda::DType dtype_of(const char* op, const Tensor& t) {
  switch (t.scalar_type()) {
    case ScalarType::Float: return cuda::DType::kFloat32;
    case ScalarType::Double: return cuda::DType::kFloat64;
    case ScalarType::Half: return cuda::DType::kFloat16;
    case ScalarType::BFloat16: return cuda::DType::kBFloat16;
    default: fail(op, ": expected float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
}

// A schedule table in the kernels' accumulation type (fp64 stays fp64), kept alive in `keep`.
const void* table_ptr(const Tensor& table, const Tensor& x, std::vector<Tensor>& keep) {
  keep.push_back(as_contiguous(st::to(table, acc_dtype(x))));
  return keep.back().const_data_ptr();
}

Tensor q_sample_cuda(const Tensor& x_start_in, const Tensor& t_in, const Tensor& sqrt_alphas_cumprod,
                     const Tensor& sqrt_one_minus_alphas_cumprod, const Tensor& noise_in) {
  check_same_layout("q_sample", x_start_in, noise_in, "x_start", "noise");
  check_timesteps("q_sample", x_start_in, t_in, {&sqrt_alphas_cumprod, &sqrt_one_minus_alphas_cumprod});
  const CudaDeviceGuard guard(x_start_in);
  const auto format = per_sample_format(x_start_in, {&noise_in});
  const Tensor x_start = as_contiguous(x_start_in, format), noise = as_contiguous(noise_in, format);
  Tensor out = empty(x_start.sizes(), x_start, x_start.scalar_type(), format);
  std::vector<Tensor> keep;
  const Tensor t = as_contiguous(t_in);
  cuda::QSampleParams p{};
  p.x_start = x_start.const_data_ptr();
  p.noise = noise.const_data_ptr();
  p.out = out.mutable_data_ptr();
  p.t = t.const_data_ptr<int64_t>();
  p.sqrt_alphas_cumprod = table_ptr(sqrt_alphas_cumprod, x_start, keep);
  p.sqrt_one_minus_alphas_cumprod = table_ptr(sqrt_one_minus_alphas_cumprod, x_start, keep);
  p.batch = x_start.size(0);
  p.per_sample = p.batch ? x_start.numel() / p.batch : 0;
  p.timesteps = sqrt_alphas_cumprod.numel();
  p.dtype = dtype_of("q_sample", x_start);
  check_launch("q_sample", cuda::launch_q_sample(p, current_stream(x_start)));
  return out;
}

const void* ptr_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

std::optional<Tensor> contiguous_or_none(const std::optional<Tensor>& t) {
  return t.has_value() ? std::optional<Tensor>(as_contiguous(*t)) : std::nullopt;
}

cuda::GroupNormActParams group_norm_params(const Tensor& x, int64_t num_groups,
                                           const std::optional<Tensor>& weight,
                                           const std::optional<Tensor>& bias,
                                           const std::optional<Tensor>& scale,
                                           const std::optional<Tensor>& shift,
                                           bool nhwc, std::string_view act) {
  cuda::GroupNormActParams p{};
  p.x = x.const_data_ptr();
  p.weight = ptr_or_null(weight);
  p.bias = ptr_or_null(bias);
  p.scale = ptr_or_null(scale);
  p.shift = ptr_or_null(shift);
  p.N = x.size(0);
  p.C = x.size(1);
  p.HW = x.size(2) * x.size(3);
  p.G = num_groups;
  p.act = static_cast<int>(parse_act(act));
  p.nhwc = nhwc;
  p.dtype = dtype_of("group_norm_act", x);
  return p;
}

std::tuple<Tensor, Tensor, Tensor> group_norm_act_cuda(
    const Tensor& x_in, int64_t num_groups, const std::optional<Tensor>& weight_in,
    const std::optional<Tensor>& bias_in, const std::optional<Tensor>& scale_in,
    const std::optional<Tensor>& shift_in, double eps, std::string_view act) {
  check_group_norm_args(x_in, num_groups, weight_in, bias_in, scale_in, shift_in);
  const CudaDeviceGuard guard(x_in);
  const bool nhwc = is_channels_last_only(x_in);
  const Tensor x = nhwc ? x_in : as_contiguous(x_in);
  const auto weight = contiguous_or_none(weight_in), bias = contiguous_or_none(bias_in);
  const auto scale = contiguous_or_none(scale_in), shift = contiguous_or_none(shift_in);
  auto p = group_norm_params(x, num_groups, weight, bias, scale, shift, nhwc, act);
  const ScalarType stats = acc_dtype(x);
  Tensor y = st::empty_like(x);
  Tensor mean = zeros({p.N, num_groups}, x, stats), rstd = zeros({p.N, num_groups}, x, stats);
  p.splits = cuda::group_norm_splits(p.N * p.G, p.C / p.G * p.HW);
  Tensor partials = empty({2 * p.N * p.G * p.splits}, x, stats);
  p.y = y.mutable_data_ptr();
  p.mean = mean.mutable_data_ptr();
  p.rstd = rstd.mutable_data_ptr();
  p.partials = partials.mutable_data_ptr();
  p.eps = eps;
  check_launch("group_norm_act", cuda::launch_group_norm_act_forward(p, current_stream(x)));
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>
group_norm_act_backward_cuda(const Tensor& grad_y, const Tensor& x_in,
                             const Tensor& mean_in, const Tensor& rstd_in,
                             int64_t num_groups, const std::optional<Tensor>& weight_in,
                             const std::optional<Tensor>& bias_in,
                             const std::optional<Tensor>& scale_in,
                             const std::optional<Tensor>& shift_in, std::string_view act) {
  check_group_norm_args(x_in, num_groups, weight_in, bias_in, scale_in, shift_in);
  check_same_layout("group_norm_act_backward", x_in, grad_y, "x", "grad_y");
  const CudaDeviceGuard guard(x_in);
  const bool nhwc = is_channels_last_only(x_in);
  const auto format = nhwc ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
  const Tensor x = as_contiguous(x_in, format), dy = as_contiguous(grad_y, format);
  const ScalarType stats = acc_dtype(x);
  const Tensor mean = as_contiguous(st::to(mean_in, stats)), rstd = as_contiguous(st::to(rstd_in, stats));
  const auto weight = contiguous_or_none(weight_in), bias = contiguous_or_none(bias_in);
  const auto scale = contiguous_or_none(scale_in), shift = contiguous_or_none(shift_in);
  auto p = group_norm_params(x, num_groups, weight, bias, scale, shift, nhwc, act);
  Tensor dx = st::empty_like(x);
  Tensor sum_du = empty({p.N, p.C}, x, stats), sum_du_xhat = empty({p.N, p.C}, x, stats);
  Tensor group_m = empty({p.N, num_groups, 2}, x, stats);
  p.mean = mean.mutable_data_ptr();
  p.rstd = rstd.mutable_data_ptr();
  p.grad_y = dy.const_data_ptr();
  p.grad_x = dx.mutable_data_ptr();
  p.sum_du = sum_du.mutable_data_ptr();
  p.sum_du_xhat = sum_du_xhat.mutable_data_ptr();
  p.group_m = group_m.mutable_data_ptr();
  if (x.numel() > 0) {
    check_launch("group_norm_act_backward", cuda::launch_group_norm_act_backward(p, current_stream(x)));
  } else {
    st::zero_(sum_du);
    st::zero_(sum_du_xhat);
  }
  auto [dweight, dbias, dscale, dshift] = group_norm_parameter_grads(
      st::to(sum_du, x.scalar_type()), st::to(sum_du_xhat, x.scalar_type()), weight, bias, scale, shift);
  return {dx, dweight, dbias, dscale, dshift};
}

cuda::LinearAttentionParams linear_attention_params(const Tensor& qkv, int64_t heads,
                                                    double scale, std::vector<Tensor>& keep,
                                                    bool backward) {
  cuda::LinearAttentionParams p{};
  p.B = qkv.size(0);
  p.heads = heads;
  p.d = qkv.size(1) / (3 * heads);
  p.n = qkv.size(2) * qkv.size(3);
  p.scale = scale;
  p.dtype = dtype_of("linear_attention", qkv);
  DDPM_CHECK(p.d <= cuda::max_head_dim(p.dtype), "linear_attention: the CUDA kernels take dim_head <= ",
              cuda::max_head_dim(p.dtype), " for ", qkv.scalar_type(), ", got ", p.d);
  const ScalarType acc = acc_dtype(qkv);
  keep.push_back(empty({p.B * heads * p.d * 2}, qkv, acc));
  p.k_stats = keep.back().mutable_data_ptr();
  keep.push_back(empty({p.B * heads * p.d * p.d}, qkv, acc));
  p.ctx = keep.back().mutable_data_ptr();
  if (backward) {
    keep.push_back(empty({p.B * heads * p.d * p.d}, qkv, acc));
    p.dctx = keep.back().mutable_data_ptr();
  }
  p.qkv = qkv.const_data_ptr();
  return p;
}

Tensor linear_attention_cuda(const Tensor& qkv_in, int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  const CudaDeviceGuard guard(qkv_in);
  const Tensor qkv = as_contiguous(qkv_in);
  std::vector<Tensor> keep;
  auto p = linear_attention_params(qkv, heads, scale, keep, false);
  Tensor out = empty({p.B, heads * p.d, qkv.size(2), qkv.size(3)}, qkv, qkv.scalar_type());
  p.out = out.mutable_data_ptr();
  check_launch("linear_attention", cuda::launch_linear_attention_forward(p, current_stream(qkv)));
  return out;
}

Tensor linear_attention_backward_cuda(const Tensor& grad_out, const Tensor& qkv_in,
                                      int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  const CudaDeviceGuard guard(qkv_in);
  const Tensor qkv = as_contiguous(qkv_in);
  std::vector<Tensor> keep;
  auto p = linear_attention_params(qkv, heads, scale, keep, true);
  DDPM_CHECK(grad_out.numel() == p.B * heads * p.d * p.n, "linear_attention_backward: grad_out must have shape (",
              p.B, ", ", heads * p.d, ", ", qkv.size(2), ", ", qkv.size(3), "), got ", shape_string(grad_out.sizes()));
  const Tensor g = st::to(as_contiguous(grad_out), qkv.scalar_type());
  Tensor grad_qkv = st::empty_like(qkv);
  p.grad_out = g.const_data_ptr();
  p.grad_qkv = grad_qkv.mutable_data_ptr();
  check_launch("linear_attention_backward", cuda::launch_linear_attention_backward(p, current_stream(qkv)));
  return grad_qkv;
}

std::tuple<Tensor, Tensor> sampler_update_cuda(const Tensor& x_in, const Tensor& m_in,
                                               const std::optional<Tensor>& prev_in,
                                               const std::optional<Tensor>& noise_in,
                                               const Tensor& step_in, const Tensor& coefs_in,
                                               double clip_sample_range, double dynamic_thresholding_ratio,
                                               double sample_max_value) {
  check_sampler_update_args(x_in, m_in, prev_in, noise_in, step_in, coefs_in, clip_sample_range,
                            dynamic_thresholding_ratio, sample_max_value);
  const CudaDeviceGuard guard(x_in);
  const auto format = per_sample_format(x_in, {&m_in, present(prev_in), present(noise_in)});
  const Tensor x = as_contiguous(x_in, format), m = as_contiguous(m_in, format);
  const auto prev = in_format(prev_in, format), noise = in_format(noise_in, format);
  const Tensor step = as_contiguous(step_in);
  // The kernel reads the table in its accumulation type, so fp64 samples keep fp64 coefficients.
  const Tensor coefs = as_contiguous(st::to(coefs_in, acc_dtype(x)));
  Tensor out = empty(x.sizes(), x, x.scalar_type(), format);
  Tensor x0 = empty(x.sizes(), x, x.scalar_type(), format);
  // Thresholding's per-sample scales stay on the device, between its two kernels.
  const bool threshold = dynamic_thresholding_ratio > 0;
  const std::optional<Tensor> scales =
      threshold ? std::optional<Tensor>(empty({x.size(0)}, x, acc_dtype(x))) : std::nullopt;
  cuda::SamplerUpdateParams p{};
  p.x = x.const_data_ptr();
  p.model_output = m.const_data_ptr();
  p.prev_x0 = ptr_or_null(prev);
  p.noise = ptr_or_null(noise);
  p.out = out.mutable_data_ptr();
  p.x0 = x0.mutable_data_ptr();
  p.step = step.const_data_ptr<int64_t>();
  p.coefs = coefs.const_data_ptr();
  p.scales = scales.has_value() ? scales->mutable_data_ptr() : nullptr;
  p.batch = x.size(0);
  p.per_sample = p.batch ? x.numel() / p.batch : 0;
  p.steps = coefs.size(0);
  p.clip_sample_range = clip_sample_range;
  p.dynamic_thresholding_ratio = dynamic_thresholding_ratio;
  p.sample_max_value = sample_max_value;
  p.dtype = dtype_of("sampler_update", x);
  check_launch("sampler_update", cuda::launch_sampler_update(p, current_stream(x)));
  return {out, x0};
}

}  // namespace

// The emulation of tests/cuda_emulation builds this file for CPU tensors, into its own library.
#ifndef DDPM_FAST_CUDA_LIBRARY
#define DDPM_FAST_CUDA_LIBRARY ddpm_fast
#define DDPM_FAST_CUDA_DISPATCH_KEY CUDA
#endif

STABLE_TORCH_LIBRARY_IMPL(DDPM_FAST_CUDA_LIBRARY, DDPM_FAST_CUDA_DISPATCH_KEY, m) {
  m.impl("q_sample", TORCH_BOX(&q_sample_cuda));
  m.impl("group_norm_act", TORCH_BOX(&group_norm_act_cuda));
  m.impl("group_norm_act_backward", TORCH_BOX(&group_norm_act_backward_cuda));
  m.impl("linear_attention", TORCH_BOX(&linear_attention_cuda));
  m.impl("linear_attention_backward", TORCH_BOX(&linear_attention_backward_cuda));
  m.impl("sampler_update", TORCH_BOX(&sampler_update_cuda));
}

}  // namespace ddpm_fast
