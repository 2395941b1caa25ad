// CUDA backend of the ddpm_fast ops: input checks, output and workspace allocation, and the
// calls into the launchers of csrc/cuda/*.cu. Compiled by the C++ compiler against torch, but
// with no ATen/cuda header, so it also compiles against a CPU-only torch (the compile check).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "../group_norm_grads.h"
#include "../sampler_update.h"
#include "launchers.h"

// torch's stable C shim (torch/csrc/inductor/aoti_torch/c/shim.h, declared there only when
// USE_CUDA is set): the current CUDA stream of a device, as a cudaStream_t.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace ddpm_fast {
namespace {

void* current_stream(const at::Tensor& t) {
  void* stream = nullptr;
  TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device(), &stream) == 0,
              "ddpm_fast: could not get the current CUDA stream of ", t.device());
  return stream;
}

void check_launch(const char* op, const char* error) {
  TORCH_CHECK(error == nullptr, op, ": CUDA kernel launch failed: ", error);
}

cuda::DType dtype_of(const char* op, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kDouble: return cuda::DType::kFloat64;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, op, ": expected float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
}

// Accumulation dtype of the statistics and workspaces: float64 for float64, else float32.
at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A schedule table in the kernels' accumulation type (fp64 stays fp64), kept alive in `keep`.
const void* table_ptr(const at::Tensor& table, const at::Tensor& x, std::vector<at::Tensor>& keep) {
  keep.push_back(table.to(acc_dtype(x)).contiguous());
  return keep.back().data_ptr();
}

at::Tensor per_sample_update(const char* op, bool p_sample, const at::Tensor& x_in,
                             const at::Tensor& y_in, const at::Tensor* z_in, const at::Tensor& t,
                             std::initializer_list<const at::Tensor*> tables) {
  c10::DeviceGuard guard(x_in.device());
  at::Tensor x = x_in, y = y_in, z = z_in ? *z_in : at::Tensor();
  if (!shares_dense_layout(x, y) || (z_in && !shares_dense_layout(x, z))) {
    x = x.contiguous();
    y = y.contiguous();
    if (z_in) z = z.contiguous();
  }
  at::Tensor out = at::empty_like(x);
  std::vector<at::Tensor> keep;
  const at::Tensor tc = t.contiguous();
  cuda::PerSampleUpdateParams p{};
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  p.z = z_in ? z.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.t = tc.data_ptr<int64_t>();
  auto it = tables.begin();
  p.A = table_ptr(**it++, x, keep);
  p.B = table_ptr(**it++, x, keep);
  p.C = p_sample ? table_ptr(**it, x, keep) : nullptr;
  p.batch = x.size(0);
  p.per_sample = p.batch ? x.numel() / p.batch : 0;
  p.timesteps = (*tables.begin())->numel();
  p.dtype = dtype_of(op, x);
  void* stream = current_stream(x);
  check_launch(op, p_sample ? cuda::launch_p_sample_update(p, stream) : cuda::launch_q_sample(p, stream));
  return out;
}

at::Tensor q_sample_cuda(const at::Tensor& x_start, const at::Tensor& t,
                         const at::Tensor& sqrt_alphas_cumprod,
                         const at::Tensor& sqrt_one_minus_alphas_cumprod, const at::Tensor& noise) {
  check_same_layout("q_sample", x_start, noise, "x_start", "noise");
  check_timesteps("q_sample", x_start, t, {&sqrt_alphas_cumprod, &sqrt_one_minus_alphas_cumprod});
  return per_sample_update("q_sample", false, x_start, noise, nullptr, t,
                           {&sqrt_alphas_cumprod, &sqrt_one_minus_alphas_cumprod});
}

at::Tensor p_sample_update_cuda(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& t,
                                const at::Tensor& sqrt_recip_alphas, const at::Tensor& eps_coef,
                                const at::Tensor& posterior_std, const at::Tensor& noise) {
  check_same_layout("p_sample_update", x, eps, "x", "eps");
  check_same_layout("p_sample_update", x, noise, "x", "noise");
  check_timesteps("p_sample_update", x, t, {&sqrt_recip_alphas, &eps_coef, &posterior_std});
  return per_sample_update("p_sample_update", true, x, eps, &noise, t,
                           {&sqrt_recip_alphas, &eps_coef, &posterior_std});
}

const void* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

c10::optional<at::Tensor> contiguous_or_none(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->contiguous()) : c10::nullopt;
}

cuda::GroupNormActParams group_norm_params(const at::Tensor& x, int64_t num_groups,
                                           const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias,
                                           const c10::optional<at::Tensor>& scale,
                                           const c10::optional<at::Tensor>& shift,
                                           bool nhwc, const std::string& act) {
  cuda::GroupNormActParams p{};
  p.x = x.data_ptr();
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_act_cuda(
    const at::Tensor& x_in, int64_t num_groups, const c10::optional<at::Tensor>& weight_in,
    const c10::optional<at::Tensor>& bias_in, const c10::optional<at::Tensor>& scale_in,
    const c10::optional<at::Tensor>& shift_in, double eps, c10::string_view act) {
  check_group_norm_args(x_in, num_groups, weight_in, bias_in, scale_in, shift_in);
  c10::DeviceGuard guard(x_in.device());
  const bool nhwc = is_channels_last_only(x_in);
  const at::Tensor x = nhwc ? x_in : x_in.contiguous();
  const auto weight = contiguous_or_none(weight_in), bias = contiguous_or_none(bias_in);
  const auto scale = contiguous_or_none(scale_in), shift = contiguous_or_none(shift_in);
  auto p = group_norm_params(x, num_groups, weight, bias, scale, shift, nhwc, std::string(act));
  const auto stats = x.options().dtype(acc_dtype(x));
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::zeros({p.N, num_groups}, stats), rstd = at::zeros({p.N, num_groups}, stats);
  p.splits = cuda::group_norm_splits(p.N * p.G, p.C / p.G * p.HW);
  at::Tensor partials = at::empty({2 * p.N * p.G * p.splits}, stats);
  p.y = y.data_ptr();
  p.mean = mean.data_ptr();
  p.rstd = rstd.data_ptr();
  p.partials = partials.data_ptr();
  p.eps = eps;
  check_launch("group_norm_act", cuda::launch_group_norm_act_forward(p, current_stream(x)));
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
group_norm_act_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x_in,
                             const at::Tensor& mean_in, const at::Tensor& rstd_in,
                             int64_t num_groups, const c10::optional<at::Tensor>& weight_in,
                             const c10::optional<at::Tensor>& bias_in,
                             const c10::optional<at::Tensor>& scale_in,
                             const c10::optional<at::Tensor>& shift_in, c10::string_view act) {
  check_group_norm_args(x_in, num_groups, weight_in, bias_in, scale_in, shift_in);
  check_same_layout("group_norm_act_backward", x_in, grad_y, "x", "grad_y");
  c10::DeviceGuard guard(x_in.device());
  const bool nhwc = is_channels_last_only(x_in);
  const auto format = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(format), dy = grad_y.contiguous(format);
  const auto stats = x.options().dtype(acc_dtype(x));
  const at::Tensor mean = mean_in.to(stats).contiguous(), rstd = rstd_in.to(stats).contiguous();
  const auto weight = contiguous_or_none(weight_in), bias = contiguous_or_none(bias_in);
  const auto scale = contiguous_or_none(scale_in), shift = contiguous_or_none(shift_in);
  auto p = group_norm_params(x, num_groups, weight, bias, scale, shift, nhwc, std::string(act));
  at::Tensor dx = at::empty_like(x);
  at::Tensor sum_du = at::empty({p.N, p.C}, stats), sum_du_xhat = at::empty({p.N, p.C}, stats);
  at::Tensor group_m = at::empty({p.N, num_groups, 2}, stats);
  p.mean = const_cast<void*>(mean.data_ptr());
  p.rstd = const_cast<void*>(rstd.data_ptr());
  p.grad_y = dy.data_ptr();
  p.grad_x = dx.data_ptr();
  p.sum_du = sum_du.data_ptr();
  p.sum_du_xhat = sum_du_xhat.data_ptr();
  p.group_m = group_m.data_ptr();
  if (x.numel() > 0) {
    check_launch("group_norm_act_backward", cuda::launch_group_norm_act_backward(p, current_stream(x)));
  } else {
    sum_du.zero_();
    sum_du_xhat.zero_();
  }
  auto [dweight, dbias, dscale, dshift] = group_norm_parameter_grads(
      sum_du.to(x.scalar_type()), sum_du_xhat.to(x.scalar_type()), weight, bias, scale, shift);
  return {dx, dweight, dbias, dscale, dshift};
}

cuda::LinearAttentionParams linear_attention_params(const at::Tensor& qkv, int64_t heads,
                                                    double scale, std::vector<at::Tensor>& keep,
                                                    bool backward) {
  cuda::LinearAttentionParams p{};
  p.B = qkv.size(0);
  p.heads = heads;
  p.d = qkv.size(1) / (3 * heads);
  p.n = qkv.size(2) * qkv.size(3);
  p.scale = scale;
  p.dtype = dtype_of("linear_attention", qkv);
  TORCH_CHECK(p.d <= cuda::max_head_dim(p.dtype), "linear_attention: the CUDA kernels take dim_head <= ",
              cuda::max_head_dim(p.dtype), " for ", qkv.scalar_type(), ", got ", p.d);
  const auto acc = qkv.options().dtype(acc_dtype(qkv));
  keep.push_back(at::empty({p.B * heads * p.d * 2}, acc));
  p.k_stats = keep.back().data_ptr();
  keep.push_back(at::empty({p.B * heads * p.d * p.d}, acc));
  p.ctx = keep.back().data_ptr();
  if (backward) {
    keep.push_back(at::empty({p.B * heads * p.d * p.d}, acc));
    p.dctx = keep.back().data_ptr();
  }
  p.qkv = qkv.data_ptr();
  return p;
}

at::Tensor linear_attention_cuda(const at::Tensor& qkv_in, int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  c10::DeviceGuard guard(qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous();
  std::vector<at::Tensor> keep;
  auto p = linear_attention_params(qkv, heads, scale, keep, false);
  at::Tensor out = at::empty({p.B, heads * p.d, qkv.size(2), qkv.size(3)}, qkv.options());
  p.out = out.data_ptr();
  check_launch("linear_attention", cuda::launch_linear_attention_forward(p, current_stream(qkv)));
  return out;
}

at::Tensor linear_attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& qkv_in,
                                          int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  c10::DeviceGuard guard(qkv_in.device());
  const at::Tensor qkv = qkv_in.contiguous();
  std::vector<at::Tensor> keep;
  auto p = linear_attention_params(qkv, heads, scale, keep, true);
  TORCH_CHECK(grad_out.numel() == p.B * heads * p.d * p.n, "linear_attention_backward: grad_out must have shape (",
              p.B, ", ", heads * p.d, ", ", qkv.size(2), ", ", qkv.size(3), "), got ", grad_out.sizes());
  const at::Tensor g = grad_out.contiguous().to(qkv.scalar_type());
  at::Tensor grad_qkv = at::empty_like(qkv);
  p.grad_out = g.data_ptr();
  p.grad_qkv = grad_qkv.data_ptr();
  check_launch("linear_attention_backward", cuda::launch_linear_attention_backward(p, current_stream(qkv)));
  return grad_qkv;
}

std::tuple<at::Tensor, at::Tensor> sampler_update_cuda(const at::Tensor& x_in, const at::Tensor& eps_in,
                                                       const c10::optional<at::Tensor>& prev_in,
                                                       const c10::optional<at::Tensor>& noise_in,
                                                       const at::Tensor& step_in, const at::Tensor& coefs_in) {
  check_sampler_update_args(x_in, eps_in, prev_in, noise_in, step_in, coefs_in);
  c10::DeviceGuard guard(x_in.device());
  const auto format = sampler_update_format(x_in, eps_in, prev_in, noise_in);
  const at::Tensor x = x_in.contiguous(format), eps = eps_in.contiguous(format);
  const auto prev = in_format(prev_in, format), noise = in_format(noise_in, format);
  const at::Tensor step = step_in.contiguous();
  // The kernel reads the table in its accumulation type, so fp64 samples keep fp64 coefficients.
  const at::Tensor coefs = coefs_in.to(acc_dtype(x)).contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  at::Tensor x0 = at::empty(x.sizes(), x.options().memory_format(format));
  cuda::SamplerUpdateParams p{};
  p.x = x.data_ptr();
  p.eps = eps.data_ptr();
  p.prev_x0 = ptr_or_null(prev);
  p.noise = ptr_or_null(noise);
  p.out = out.data_ptr();
  p.x0 = x0.data_ptr();
  p.step = step.data_ptr<int64_t>();
  p.coefs = coefs.data_ptr();
  p.batch = x.size(0);
  p.per_sample = p.batch ? x.numel() / p.batch : 0;
  p.steps = coefs.size(0);
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

TORCH_LIBRARY_IMPL(DDPM_FAST_CUDA_LIBRARY, DDPM_FAST_CUDA_DISPATCH_KEY, m) {
  m.impl("q_sample", &q_sample_cuda);
  m.impl("p_sample_update", &p_sample_update_cuda);
  m.impl("group_norm_act", &group_norm_act_cuda);
  m.impl("group_norm_act_backward", &group_norm_act_backward_cuda);
  m.impl("linear_attention", &linear_attention_cuda);
  m.impl("linear_attention_backward", &linear_attention_backward_cuda);
  m.impl("sampler_update", &sampler_update_cuda);
}

}  // namespace ddpm_fast
