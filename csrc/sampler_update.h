// sampler_update's argument checks, shared by its CPU and CUDA bindings (its layout rule is
// per_sample_format, in checks.h).
#pragma once
#include "checks.h"

namespace ddpm_fast {

// Columns of a coefficient row (ddpm_fast/diffusion/samplers.py, COEFFICIENTS), with m the
// model's output:
//   x0 = clip(c[5] x + c[6] m);  x_next = c[0] x + c[1] m + c[2] x0 + c[3] prev_x0 + c[4] noise
constexpr int64_t kSamplerCoefficients = 7;

inline void check_sampler_update_args(const Tensor& x, const Tensor& eps,
                                      const std::optional<Tensor>& prev_x0,
                                      const std::optional<Tensor>& noise,
                                      const Tensor& step, const Tensor& coefs,
                                      double clip_sample_range, double dynamic_thresholding_ratio,
                                      double sample_max_value) {
  DDPM_CHECK(x.dim() >= 1, "sampler_update: expected a batched x of shape (B, ...), got a 0-D tensor");
  DDPM_CHECK(is_floating(x.scalar_type()),
              "sampler_update: x must be a floating-point tensor, got ", x.scalar_type());
  check_same_layout("sampler_update", x, eps, "x", "model_output");
  if (prev_x0.has_value()) check_same_layout("sampler_update", x, *prev_x0, "x", "prev_x0");
  if (noise.has_value()) check_same_layout("sampler_update", x, *noise, "x", "noise");
  DDPM_CHECK(step.dim() == 1 && step.size(0) == x.size(0), "sampler_update: step must have shape (",
              x.size(0), ",), one row of coefs per sample, got ", shape_string(step.sizes()));
  DDPM_CHECK(step.scalar_type() == ScalarType::Long, "sampler_update: step must be int64, got ", step.scalar_type());
  DDPM_CHECK(same_device(step, x), "sampler_update: step must be on ", device_string(x), ", got ",
              device_string(step));
  DDPM_CHECK(coefs.dim() == 2 && coefs.size(1) == kSamplerCoefficients,
              "sampler_update: coefs must have shape (steps, 7), got ", shape_string(coefs.sizes()));
  DDPM_CHECK(same_device(coefs, x), "sampler_update: coefs must be on ", device_string(x), ", got ",
             device_string(coefs));
  DDPM_CHECK(coefs.scalar_type() == ScalarType::Float || coefs.scalar_type() == x.scalar_type(),
              "sampler_update: coefs must be float32 or ", x.scalar_type(), ", got ", coefs.scalar_type());
  // `!(v >= 0)` also catches NaN.
  DDPM_CHECK(clip_sample_range >= 0, "sampler_update: clip_sample_range must be >= 0 (0: no clipping), got ",
             clip_sample_range);
  DDPM_CHECK(dynamic_thresholding_ratio >= 0 && dynamic_thresholding_ratio <= 1,
             "sampler_update: dynamic_thresholding_ratio must lie in (0, 1] (0: no thresholding), got ",
             dynamic_thresholding_ratio);
  DDPM_CHECK(!(clip_sample_range > 0 && dynamic_thresholding_ratio > 0),
             "sampler_update: clip_sample_range and dynamic_thresholding_ratio are exclusive; set one");
  DDPM_CHECK(!(dynamic_thresholding_ratio > 0) || sample_max_value > 0,
             "sampler_update: sample_max_value must be > 0 with thresholding, got ", sample_max_value);
}

}  // namespace ddpm_fast
