// CPU kernels of the two per-sample affine updates of DDPM: q_sample (forward noising) and
// p_sample_update (one reverse step). Both are memory bound: one read of each input, one write.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../checks.h"
#include "dispatch.h"
#include "isa.h"

namespace ddpm_fast {
namespace {

// Row t[b] of a schedule table (float32 or float64) for each sample b, in T: a plain loop, as
// the stable ABI has no index_select (and the batch's few rows need no kernel).
template <typename T>
std::vector<T> gather_table(const Tensor& table, const int64_t* t, int64_t batch) {
  std::vector<T> rows(batch);
  const int64_t stride = table.stride(0);
  if (table.scalar_type() == ScalarType::Double) {
    const double* p = table.const_data_ptr<double>();
    for (int64_t b = 0; b < batch; ++b) rows[b] = T(p[t[b] * stride]);
  } else {
    const float* p = table.const_data_ptr<float>();
    for (int64_t b = 0; b < batch; ++b) rows[b] = T(p[t[b] * stride]);
  }
  return rows;
}

// out[i] = a[b] * x[i] + c[b] * y[i] (+ e[b] * z[i] when z is given) for element i of sample b:
// the shape of both updates. Parallel over flat chunks; each chunk walks the samples it overlaps
// so that the inner loop is a plain vectorisable combination.
template <typename T>
void per_sample_combination(const T* x, const T* y, const T* z, const T* a, const T* c,
                            const T* e, T* out, int64_t batch, int64_t per_sample) {
  torch::stable::parallel_for(0, batch * per_sample, 16384, [&](int64_t begin, int64_t end) {
    dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
      int64_t i = begin;
      while (i < end) {
        const int64_t b = i / per_sample;
        const int64_t stop = std::min(end, (b + 1) * per_sample);
        const T ab = a[b], cb = c[b];
        if (z == nullptr) {
          for (int64_t j = i; j < stop; ++j) out[j] = ab * x[j] + cb * y[j];
        } else {
          const T eb = e[b];
          for (int64_t j = i; j < stop; ++j) out[j] = ab * x[j] + cb * y[j] + eb * z[j];
        }
        i = stop;
      }
    });
  });
}

// Runs per_sample_combination on x's layout when every input shares it (NCHW or channels_last),
// else on contiguous copies. `z` is absent in the two-term form; `coefficients` gives, for x's
// dtype T, the per-sample a, c (and e) from the contiguous timesteps.
template <typename Coefficients>
Tensor combination_launch(Tensor x, Tensor y, std::optional<Tensor> z, const Coefficients& coefficients) {
  if (!shares_dense_layout(x, y) || (z.has_value() && !shares_dense_layout(x, *z))) {
    x = as_contiguous(x);
    y = as_contiguous(y);
    if (z.has_value()) z = as_contiguous(*z);
  }
  Tensor out = torch::stable::empty_like(x);
  const int64_t batch = x.size(0);
  if (batch == 0 || x.numel() == 0) return out;
  dispatch_floating(x.scalar_type(), "per_sample_combination", [&]<typename T>() {
    const auto [a, c, e] = coefficients.template operator()<T>(batch);
    per_sample_combination<T>(x.const_data_ptr<T>(), y.const_data_ptr<T>(),
                              z.has_value() ? z->const_data_ptr<T>() : nullptr, a.data(), c.data(),
                              e.empty() ? nullptr : e.data(), out.mutable_data_ptr<T>(), batch,
                              x.numel() / batch);
  });
  return out;
}

Tensor q_sample_cpu(const Tensor& x_start, const Tensor& t_in, const Tensor& sqrt_alphas_cumprod,
                    const Tensor& sqrt_one_minus_alphas_cumprod, const Tensor& noise) {
  check_same_layout("q_sample", x_start, noise, "x_start", "noise");
  check_timesteps("q_sample", x_start, t_in, {&sqrt_alphas_cumprod, &sqrt_one_minus_alphas_cumprod});
  check_range("q_sample", "t", t_in, sqrt_alphas_cumprod.numel());
  const Tensor t = as_contiguous(t_in);
  return combination_launch(x_start, noise, std::nullopt, [&]<typename T>(int64_t batch) {
    const int64_t* tp = t.const_data_ptr<int64_t>();
    return std::tuple{gather_table<T>(sqrt_alphas_cumprod, tp, batch),
                      gather_table<T>(sqrt_one_minus_alphas_cumprod, tp, batch), std::vector<T>()};
  });
}

// x_prev = m * (x - e * eps) + s * noise = m * x + (-m * e) * eps + s * noise, per sample.
Tensor p_sample_update_cpu(const Tensor& x, const Tensor& eps, const Tensor& t_in,
                           const Tensor& sqrt_recip_alphas, const Tensor& eps_coef,
                           const Tensor& posterior_std, const Tensor& noise) {
  check_same_layout("p_sample_update", x, eps, "x", "eps");
  check_same_layout("p_sample_update", x, noise, "x", "noise");
  check_timesteps("p_sample_update", x, t_in, {&sqrt_recip_alphas, &eps_coef, &posterior_std});
  check_range("p_sample_update", "t", t_in, sqrt_recip_alphas.numel());
  const Tensor t = as_contiguous(t_in);
  return combination_launch(x, eps, noise, [&]<typename T>(int64_t batch) {
    const int64_t* tp = t.const_data_ptr<int64_t>();
    std::vector<T> m = gather_table<T>(sqrt_recip_alphas, tp, batch);
    std::vector<T> c = gather_table<T>(eps_coef, tp, batch);
    for (int64_t b = 0; b < batch; ++b) c[b] = -m[b] * c[b];
    return std::tuple{m, c, gather_table<T>(posterior_std, tp, batch)};
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("q_sample", TORCH_BOX(&q_sample_cpu));
  m.impl("p_sample_update", TORCH_BOX(&p_sample_update_cpu));
}

}  // namespace ddpm_fast
