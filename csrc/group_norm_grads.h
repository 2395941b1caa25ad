// The parameter gradients of group_norm_act from the two per-(n, c) sums that every backend's
// backward kernel reduces (sum_du = sum of du, sum_du_xhat = sum of du * xhat over H*W):
//   dweight = sum_n (1 + scale) * sum_du_xhat, dbias = sum_n (1 + scale) * sum_du,
//   dscale = weight * sum_du_xhat + bias * sum_du, dshift = sum_du.
// Small (N, C) tensor ops on the sums' device, shared by the CPU and CUDA bindings. An absent
// input's gradient is an empty tensor, as the op's schema promises.
#pragma once
#include <optional>
#include <tuple>
#include <vector>

#include "stable_tensor.h"

namespace ddpm_fast {

inline std::tuple<Tensor, Tensor, Tensor, Tensor> group_norm_parameter_grads(
    const Tensor& sum_du, const Tensor& sum_du_xhat, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const std::optional<Tensor>& scale,
    const std::optional<Tensor>& shift) {
  namespace st = torch::stable;
  const std::vector<int64_t> sizes(sum_du.sizes().begin(), sum_du.sizes().end());
  const std::vector<int64_t> batch_dim{0};
  const Tensor ones = st::fill_(st::new_empty(sum_du, sizes), 1.0);
  const Tensor one_plus_scale = scale.has_value() ? add(st::reshape(*scale, sizes), ones) : ones;
  const Tensor empty = st::new_empty(sum_du, std::vector<int64_t>{0});
  const Tensor dweight = weight.has_value() ? st::sum(mul(one_plus_scale, sum_du_xhat), batch_dim) : empty;
  const Tensor dbias = bias.has_value() ? st::sum(mul(one_plus_scale, sum_du), batch_dim) : empty;
  Tensor dscale = empty;
  if (scale.has_value()) {
    Tensor z_sum = sum_du_xhat;
    if (weight.has_value()) z_sum = mul(z_sum, *weight);
    if (bias.has_value()) z_sum = add(z_sum, mul(sum_du, *bias));
    dscale = st::reshape(z_sum, scale->sizes());
  }
  const Tensor dshift = shift.has_value() ? st::reshape(sum_du, shift->sizes()) : empty;
  return {dweight, dbias, dscale, dshift};
}

}  // namespace ddpm_fast
