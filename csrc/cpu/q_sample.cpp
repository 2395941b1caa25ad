// CPU kernel of q_sample, DDPM's forward noising: per sample, x_t = a[t] * x_start + c[t] * noise.
// Memory bound: one read of each input, one write.
// Parallelisation: flat chunks of the whole batch, each walking the samples it overlaps so that
// the inner loop is a plain vectorisable combination with the sample's two coefficients.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
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

// out[i] = a[b] * x[i] + c[b] * y[i] for element i of sample b.
template <typename T>
void q_sample_kernel(const T* x, const T* y, const T* a, const T* c, T* out, int64_t batch, int64_t per_sample) {
  torch::stable::parallel_for(0, batch * per_sample, 16384, [&](int64_t begin, int64_t end) {
    dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
      int64_t i = begin;
      while (i < end) {
        const int64_t b = i / per_sample;
        const int64_t stop = std::min(end, (b + 1) * per_sample);
        const T ab = a[b], cb = c[b];
        for (int64_t j = i; j < stop; ++j) out[j] = ab * x[j] + cb * y[j];
        i = stop;
      }
    });
  });
}

Tensor q_sample_cpu(const Tensor& x_start_in, const Tensor& t_in, const Tensor& sqrt_alphas_cumprod,
                    const Tensor& sqrt_one_minus_alphas_cumprod, const Tensor& noise_in) {
  check_same_layout("q_sample", x_start_in, noise_in, "x_start", "noise");
  check_timesteps("q_sample", x_start_in, t_in, {&sqrt_alphas_cumprod, &sqrt_one_minus_alphas_cumprod});
  check_range("q_sample", "t", t_in, sqrt_alphas_cumprod.numel());
  const auto format = per_sample_format(x_start_in, {&noise_in});
  const Tensor x_start = as_contiguous(x_start_in, format), noise = as_contiguous(noise_in, format);
  Tensor out = empty(x_start.sizes(), x_start, x_start.scalar_type(), format);
  const int64_t batch = x_start.size(0);
  if (batch == 0 || x_start.numel() == 0) return out;
  const Tensor t = as_contiguous(t_in);
  dispatch_floating(x_start.scalar_type(), "q_sample", [&]<typename T>() {
    const int64_t* tp = t.const_data_ptr<int64_t>();
    const std::vector<T> a = gather_table<T>(sqrt_alphas_cumprod, tp, batch);
    const std::vector<T> c = gather_table<T>(sqrt_one_minus_alphas_cumprod, tp, batch);
    q_sample_kernel<T>(x_start.const_data_ptr<T>(), noise.const_data_ptr<T>(), a.data(), c.data(),
                       out.mutable_data_ptr<T>(), batch, x_start.numel() / batch);
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("q_sample", TORCH_BOX(&q_sample_cpu));
}

}  // namespace ddpm_fast
