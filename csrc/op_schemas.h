// Every op schema of ddpm_fast, defined once. module.cpp defines them in the ddpm_fast library; the
// CUDA emulation of the tests defines the same schemas in its own library, so that the real CUDA
// binding runs there unchanged.
#pragma once
#include <torch/csrc/stable/library.h>

namespace ddpm_fast {

inline void define_op_schemas(torch::stable::detail::StableLibrary& m) {
  // x_t = sqrt_alphas_cumprod[t] * x_start + sqrt_one_minus_alphas_cumprod[t] * noise
  m.def(
      "q_sample(Tensor x_start, Tensor t, Tensor sqrt_alphas_cumprod, "
      "Tensor sqrt_one_minus_alphas_cumprod, Tensor noise) -> Tensor");
  // act(GroupNorm(x) * weight + bias) * (scale + 1) + shift); returns (y, mean, rstd) with
  // mean and rstd of shape (N, num_groups) in the accumulation type, saved for backward.
  m.def(
      "group_norm_act(Tensor x, int num_groups, Tensor? weight, Tensor? bias, Tensor? scale, "
      "Tensor? shift, float eps, str act) -> (Tensor, Tensor, Tensor)");
  // Gradients (dx, dweight, dbias, dscale, dshift); an absent input's gradient is empty.
  m.def(
      "group_norm_act_backward(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, "
      "int num_groups, Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, str act) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The seed's LinearAttention between to_qkv and to_out:
  // qkv (B, 3*heads*d, H, W) -> (B, heads*d, H, W)
  m.def("linear_attention(Tensor qkv, int heads, float scale) -> Tensor");
  m.def(
      "linear_attention_backward(Tensor grad_out, Tensor qkv, int heads, float scale) -> Tensor");
  // linear_attention(conv1x1(x, w_qkv), heads, scale) without materialising qkv:
  // x (B, C, H, W), w_qkv (3*heads*d, C, 1, 1) -> (B, heads*d, H, W). CPU kernels only.
  m.def("projected_linear_attention(Tensor x, Tensor w_qkv, int heads, float scale) -> Tensor");
  // Gradient with respect to the (never stored) qkv: (B, 3*heads*d, H, W).
  m.def(
      "projected_linear_attention_backward(Tensor grad_out, Tensor x, Tensor w_qkv, int heads, "
      "float scale) -> Tensor");
  // One step of any sampler (DDPM, DDIM, DPM-Solver++, SDE-DPM-Solver++; for any prediction
  // type; ddpm_fast/diffusion/samplers.py). For sample b, m its model output and its
  // coefficient row c = coefs[step[b]] of shape (7,):
  //   x0 = c[5] * x + c[6] * m, then clamped to [-clip_sample_range, clip_sample_range] (> 0) or
  //        dynamically thresholded (dynamic_thresholding_ratio > 0: s = clamp(quantile(|x0|,
  //        ratio), 1, sample_max_value), x0 = clamp(x0, -s, s) / s); at most one of the two
  //   out = c[0] * x + c[1] * m + c[2] * x0 + c[3] * prev_x0 + c[4] * noise
  // An absent prev_x0 or noise drops its term. Returns (out, x0), both shaped as x.
  m.def(
      "sampler_update(Tensor x, Tensor model_output, Tensor? prev_x0, Tensor? noise, Tensor step, "
      "Tensor coefs, float clip_sample_range=0., float dynamic_thresholding_ratio=0., "
      "float sample_max_value=1.) -> (Tensor, Tensor)");
}

}  // namespace ddpm_fast
