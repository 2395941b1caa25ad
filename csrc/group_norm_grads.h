// The parameter gradients of group_norm_act from the two per-(n, c) sums that every backend's
// backward kernel reduces (sum_du = sum of du, sum_du_xhat = sum of du * xhat over H*W):
//   dweight = sum_n (1 + scale) * sum_du_xhat, dbias = sum_n (1 + scale) * sum_du,
//   dscale = weight * sum_du_xhat + bias * sum_du, dshift = sum_du.
// Small (N, C) tensor ops, shared by the CPU and CUDA bindings. An absent input's gradient is
// an empty tensor, as the op's schema promises.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace ddpm_fast {

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_parameter_grads(
    const at::Tensor& sum_du, const at::Tensor& sum_du_xhat,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift) {
  const auto options = sum_du.options();
  const at::Tensor one_plus_scale =
      scale.has_value() ? scale->reshape(sum_du.sizes()) + 1 : at::ones(sum_du.sizes(), options);
  const at::Tensor empty = at::empty({0}, options);
  const at::Tensor dweight = weight.has_value() ? (one_plus_scale * sum_du_xhat).sum(0) : empty;
  const at::Tensor dbias = bias.has_value() ? (one_plus_scale * sum_du).sum(0) : empty;
  at::Tensor dscale = empty;
  if (scale.has_value()) {
    at::Tensor z_sum = sum_du_xhat;
    if (weight.has_value()) z_sum = z_sum * *weight;
    if (bias.has_value()) z_sum = z_sum + sum_du * *bias;
    dscale = z_sum.reshape(scale->sizes());
  }
  const at::Tensor dshift = shift.has_value() ? sum_du.reshape(shift->sizes()) : empty;
  return {dweight, dbias, dscale, dshift};
}

}  // namespace ddpm_fast
