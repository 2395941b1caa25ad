// CPU kernels of the two per-sample affine updates of DDPM: q_sample (forward noising) and
// p_sample_update (one reverse step). Both are memory bound: one read of each input, one write.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "isa.h"

namespace ddpm_fast {
namespace {

at::Tensor gather_table(const at::Tensor& table, const at::Tensor& t, at::ScalarType dtype) {
  return table.index_select(0, t).to(dtype);
}

// out[i] = a[b] * x[i] + c[b] * y[i] (+ e[b] * z[i] when z is given) for element i of sample b:
// the shape of both updates. Parallel over flat chunks; each chunk walks the samples it overlaps
// so that the inner loop is a plain vectorisable combination.
template <typename T>
void per_sample_combination(const T* x, const T* y, const T* z, const T* a, const T* c,
                            const T* e, T* out, int64_t batch, int64_t per_sample) {
  at::parallel_for(0, batch * per_sample, 16384, [&](int64_t begin, int64_t end) {
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
// else on contiguous copies. `z` and `e` may be undefined (the two-term form).
at::Tensor combination_launch(at::Tensor x, at::Tensor y, at::Tensor z, const at::Tensor& a,
                              const at::Tensor& c, const at::Tensor& e) {
  if (!shares_dense_layout(x, y) || (z.defined() && !shares_dense_layout(x, z))) {
    x = x.contiguous();
    y = y.contiguous();
    if (z.defined()) z = z.contiguous();
  }
  at::Tensor out = at::empty_like(x);
  const int64_t batch = x.size(0);
  if (batch == 0 || x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "per_sample_combination", [&] {
    using T = scalar_t;
    per_sample_combination<T>(x.data_ptr<T>(), y.data_ptr<T>(),
                              z.defined() ? z.data_ptr<T>() : nullptr, a.data_ptr<T>(),
                              c.data_ptr<T>(), e.defined() ? e.data_ptr<T>() : nullptr,
                              out.data_ptr<T>(), batch, x.numel() / batch);
  });
  return out;
}

at::Tensor q_sample_cpu(const at::Tensor& x_start, const at::Tensor& t,
                        const at::Tensor& sqrt_alphas_cumprod,
                        const at::Tensor& sqrt_one_minus_alphas_cumprod,
                        const at::Tensor& noise) {
  check_same_layout("q_sample", x_start, noise, "x_start", "noise");
  check_timesteps("q_sample", x_start, t, {&sqrt_alphas_cumprod, &sqrt_one_minus_alphas_cumprod});
  check_range("q_sample", "t", t, sqrt_alphas_cumprod.numel());
  const auto dtype = x_start.scalar_type();
  return combination_launch(x_start, noise, at::Tensor(),
                            gather_table(sqrt_alphas_cumprod, t, dtype),
                            gather_table(sqrt_one_minus_alphas_cumprod, t, dtype), at::Tensor());
}

// x_prev = m * (x - e * eps) + s * noise = m * x + (-m * e) * eps + s * noise, per sample.
at::Tensor p_sample_update_cpu(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& t,
                               const at::Tensor& sqrt_recip_alphas, const at::Tensor& eps_coef,
                               const at::Tensor& posterior_std, const at::Tensor& noise) {
  check_same_layout("p_sample_update", x, eps, "x", "eps");
  check_same_layout("p_sample_update", x, noise, "x", "noise");
  check_timesteps("p_sample_update", x, t, {&sqrt_recip_alphas, &eps_coef, &posterior_std});
  check_range("p_sample_update", "t", t, sqrt_recip_alphas.numel());
  const auto dtype = x.scalar_type();
  const at::Tensor m = gather_table(sqrt_recip_alphas, t, dtype);
  return combination_launch(x, eps, noise, m, -m * gather_table(eps_coef, t, dtype),
                            gather_table(posterior_std, t, dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("q_sample", &q_sample_cpu);
  m.impl("p_sample_update", &p_sample_update_cpu);
}

}  // namespace ddpm_fast
