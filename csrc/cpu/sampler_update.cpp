// CPU kernel of sampler_update, the one update step shared by the DDPM, DDIM and DPM-Solver++
// samplers: per sample, two affine combinations of up to four inputs. Memory bound: one read
// of each input, one write of each output.
// Parallelisation: flat chunks of the whole batch, each walking the samples it overlaps so the
// inner loop is a plain combination with the sample's six coefficients held in registers.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../sampler_update.h"
#include "dispatch.h"
#include "isa.h"
#include "vector_math.h"

namespace ddpm_fast {
namespace {

// Elements [0, n) of one sample: x0 = c4 x + c5 eps and out = c0 x + c1 eps (+ c2 prev) (+ c3 noise).
// The absent inputs are template switches, not branches, so that every variant vectorises; it
// is inlined into its caller, compiled for the active instruction-set level (isa.h).
template <typename T, bool PREV, bool NOISE>
DDPM_FAST_INLINE void combine(const T* __restrict x, const T* __restrict eps,
                                   const T* __restrict prev, const T* __restrict noise,
                                   const T* __restrict c, T* __restrict out, T* __restrict x0,
                                   int64_t n) {
  const T c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5];
  for (int64_t j = 0; j < n; ++j) {
    const T xv = x[j], ev = eps[j];
    T v = c0 * xv + c1 * ev;
    if constexpr (PREV) v += c2 * prev[j];
    if constexpr (NOISE) v += c3 * noise[j];
    out[j] = v;
    x0[j] = c4 * xv + c5 * ev;
  }
}

template <typename T, bool PREV, bool NOISE>
void sampler_update_kernel(const T* x, const T* eps, const T* prev, const T* noise, const T* rows,
                           T* out, T* x0, int64_t batch, int64_t per_sample) {
  torch::stable::parallel_for(0, batch * per_sample, 16384, [&](int64_t begin, int64_t end) {
    dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
      int64_t i = begin;
      while (i < end) {
        const int64_t b = i / per_sample;
        const int64_t stop = std::min(end, (b + 1) * per_sample);
        combine<T, PREV, NOISE>(x + i, eps + i, PREV ? prev + i : nullptr, NOISE ? noise + i : nullptr,
                                rows + b * kSamplerCoefficients, out + i, x0 + i, stop - i);
        i = stop;
      }
    });
  });
}

// The (B, 6) coefficient rows of the batch, coefs[step[b]] in T: a plain loop, as the stable ABI
// has no index_select.
template <typename T>
std::vector<T> gather_rows(const Tensor& coefs, const Tensor& step_in, int64_t batch) {
  const Tensor step = as_contiguous(step_in);
  const int64_t* sp = step.const_data_ptr<int64_t>();
  const int64_t row_stride = coefs.stride(0), column_stride = coefs.stride(1);
  std::vector<T> rows(batch * kSamplerCoefficients);
  auto gather = [&](const auto* table) {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < kSamplerCoefficients; ++j)
        rows[b * kSamplerCoefficients + j] = T(table[sp[b] * row_stride + j * column_stride]);
  };
  if (coefs.scalar_type() == ScalarType::Double) gather(coefs.const_data_ptr<double>());
  else gather(coefs.const_data_ptr<float>());
  return rows;
}

std::tuple<Tensor, Tensor> sampler_update_cpu(const Tensor& x_in, const Tensor& eps_in,
                                              const std::optional<Tensor>& prev_in,
                                              const std::optional<Tensor>& noise_in, const Tensor& step,
                                              const Tensor& coefs) {
  check_sampler_update_args(x_in, eps_in, prev_in, noise_in, step, coefs);
  check_range("sampler_update", "step", step, coefs.size(0));
  const auto format = per_sample_format(x_in, {&eps_in, present(prev_in), present(noise_in)});
  const Tensor x = as_contiguous(x_in, format), eps = as_contiguous(eps_in, format);
  const auto prev = in_format(prev_in, format), noise = in_format(noise_in, format);
  Tensor out = empty(x.sizes(), x, x.scalar_type(), format);
  Tensor x0 = empty(x.sizes(), x, x.scalar_type(), format);
  const int64_t batch = x.size(0);
  if (batch == 0 || x.numel() == 0) return {out, x0};
  dispatch_floating(x.scalar_type(), "sampler_update", [&]<typename T>() {
    const std::vector<T> rows = gather_rows<T>(coefs, step, batch);
    const T* p = prev.has_value() ? prev->const_data_ptr<T>() : nullptr;
    const T* z = noise.has_value() ? noise->const_data_ptr<T>() : nullptr;
    auto run = [&](auto kernel) {
      kernel(x.const_data_ptr<T>(), eps.const_data_ptr<T>(), p, z, rows.data(), out.mutable_data_ptr<T>(),
             x0.mutable_data_ptr<T>(), batch, x.numel() / batch);
    };
    if (p && z) run(sampler_update_kernel<T, true, true>);
    else if (p) run(sampler_update_kernel<T, true, false>);
    else if (z) run(sampler_update_kernel<T, false, true>);
    else run(sampler_update_kernel<T, false, false>);
  });
  return {out, x0};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("sampler_update", TORCH_BOX(&sampler_update_cpu));
}

}  // namespace ddpm_fast
