// CPU kernels of the two per-sample affine updates of DDPM: q_sample (forward noising) and
// p_sample_update (one reverse step). Both are memory bound: one read of each input, one write.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"

namespace ddpm_fast {
namespace {

at::Tensor gather_table(const at::Tensor& table, const at::Tensor& t, at::ScalarType dtype) {
  return table.index_select(0, t).to(dtype);
}

void check_range(const char* op, const at::Tensor& t_in, int64_t T) {
  const at::Tensor t = t_in.contiguous();
  const int64_t* tp = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    TORCH_CHECK(tp[i] >= 0 && tp[i] < T, op, ": t[", i, "]=", tp[i], " lies outside [0, ", T, ")");
  }
}

// out[i] = a[b] * x[i] + c[b] * y[i] for i in sample b: the shape of both updates
// (p_sample_update folds its three coefficients into this form).
template <typename scalar_t>
void per_sample_axpby(const scalar_t* x, const scalar_t* y, const scalar_t* a, const scalar_t* c,
                      scalar_t* out, int64_t batch, int64_t per_sample) {
  // Parallel over flat chunks; each chunk walks the samples it overlaps so the inner loop is a
  // plain vectorisable axpby.
  at::parallel_for(0, batch * per_sample, 16384, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / per_sample;
      const int64_t stop = std::min(end, (b + 1) * per_sample);
      const scalar_t ab = a[b], cb = c[b];
      for (int64_t j = i; j < stop; ++j) out[j] = ab * x[j] + cb * y[j];
      i = stop;
    }
  });
}

at::Tensor axpby_launch(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& a,
                        const at::Tensor& c) {
  at::Tensor x = x_in, y = y_in;
  if (!shares_dense_layout(x, y)) {
    x = x.contiguous();
    y = y.contiguous();
  }
  at::Tensor out = at::empty_like(x);
  const int64_t batch = x.size(0);
  if (batch == 0 || x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "per_sample_axpby", [&] {
    per_sample_axpby<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                               a.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                               out.data_ptr<scalar_t>(), batch, x.numel() / batch);
  });
  return out;
}

at::Tensor q_sample_cpu(const at::Tensor& x_start, const at::Tensor& t,
                        const at::Tensor& sqrt_alphas_cumprod,
                        const at::Tensor& sqrt_one_minus_alphas_cumprod,
                        const at::Tensor& noise) {
  check_same_layout("q_sample", x_start, noise, "x_start", "noise");
  check_timesteps("q_sample", x_start, t, {&sqrt_alphas_cumprod, &sqrt_one_minus_alphas_cumprod});
  check_range("q_sample", t, sqrt_alphas_cumprod.numel());
  const auto dtype = x_start.scalar_type();
  return axpby_launch(x_start, noise, gather_table(sqrt_alphas_cumprod, t, dtype),
                      gather_table(sqrt_one_minus_alphas_cumprod, t, dtype));
}

// x_prev = m * (x - e * eps) + s * noise, with m, e, s per sample; computed as
// out = m * x + (-m * e) * eps, then out += s * noise, two vectorised passes over the batch.
template <typename scalar_t>
void p_sample_update_kernel(const scalar_t* x, const scalar_t* eps, const scalar_t* noise,
                            const scalar_t* m, const scalar_t* e, const scalar_t* s,
                            scalar_t* out, int64_t batch, int64_t per_sample) {
  at::parallel_for(0, batch * per_sample, 16384, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / per_sample;
      const int64_t stop = std::min(end, (b + 1) * per_sample);
      const scalar_t mb = m[b], me = -m[b] * e[b], sb = s[b];
      for (int64_t j = i; j < stop; ++j) out[j] = mb * x[j] + me * eps[j] + sb * noise[j];
      i = stop;
    }
  });
}

at::Tensor p_sample_update_cpu(const at::Tensor& x_in, const at::Tensor& eps_in,
                               const at::Tensor& t, const at::Tensor& sqrt_recip_alphas,
                               const at::Tensor& eps_coef, const at::Tensor& posterior_std,
                               const at::Tensor& noise_in) {
  check_same_layout("p_sample_update", x_in, eps_in, "x", "eps");
  check_same_layout("p_sample_update", x_in, noise_in, "x", "noise");
  check_timesteps("p_sample_update", x_in, t, {&sqrt_recip_alphas, &eps_coef, &posterior_std});
  check_range("p_sample_update", t, sqrt_recip_alphas.numel());
  at::Tensor x = x_in, eps = eps_in, noise = noise_in;
  if (!shares_dense_layout(x, eps) || !shares_dense_layout(x, noise)) {
    x = x.contiguous();
    eps = eps.contiguous();
    noise = noise.contiguous();
  }
  at::Tensor out = at::empty_like(x);
  const int64_t batch = x.size(0);
  if (batch == 0 || x.numel() == 0) return out;
  const auto dtype = x.scalar_type();
  const at::Tensor m = gather_table(sqrt_recip_alphas, t, dtype);
  const at::Tensor e = gather_table(eps_coef, t, dtype);
  const at::Tensor s = gather_table(posterior_std, t, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, "p_sample_update", [&] {
    p_sample_update_kernel<scalar_t>(x.data_ptr<scalar_t>(), eps.data_ptr<scalar_t>(),
                                     noise.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                                     e.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                                     out.data_ptr<scalar_t>(), batch, x.numel() / batch);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("q_sample", &q_sample_cpu);
  m.impl("p_sample_update", &p_sample_update_cpu);
}

}  // namespace ddpm_fast
