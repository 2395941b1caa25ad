// CPU kernel of sampler_update, the one update step shared by the DDPM, DDIM and DPM-Solver++
// samplers: per sample, two affine combinations of up to four inputs. Memory bound: one read
// of each input, one write of each output.
// Parallelisation: flat chunks of the whole batch, each walking the samples it overlaps so the
// inner loop is a plain combination with the sample's six coefficients held in registers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../sampler_update.h"
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
  at::parallel_for(0, batch * per_sample, 16384, [&](int64_t begin, int64_t end) {
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

std::tuple<at::Tensor, at::Tensor> sampler_update_cpu(const at::Tensor& x_in, const at::Tensor& eps_in,
                                                      const c10::optional<at::Tensor>& prev_in,
                                                      const c10::optional<at::Tensor>& noise_in,
                                                      const at::Tensor& step, const at::Tensor& coefs) {
  check_sampler_update_args(x_in, eps_in, prev_in, noise_in, step, coefs);
  check_range("sampler_update", "step", step, coefs.size(0));
  const auto format = sampler_update_format(x_in, eps_in, prev_in, noise_in);
  const at::Tensor x = x_in.contiguous(format), eps = eps_in.contiguous(format);
  const auto prev = in_format(prev_in, format), noise = in_format(noise_in, format);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  at::Tensor x0 = at::empty(x.sizes(), x.options().memory_format(format));
  const int64_t batch = x.size(0);
  if (batch == 0 || x.numel() == 0) return {out, x0};
  // The (B, 6) coefficient rows of the batch, in x's dtype.
  const at::Tensor rows = coefs.index_select(0, step).to(x.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sampler_update", [&] {
    using T = scalar_t;
    const T* p = prev.has_value() ? prev->data_ptr<T>() : nullptr;
    const T* z = noise.has_value() ? noise->data_ptr<T>() : nullptr;
    auto run = [&](auto kernel) {
      kernel(x.data_ptr<T>(), eps.data_ptr<T>(), p, z, rows.data_ptr<T>(), out.data_ptr<T>(),
             x0.data_ptr<T>(), batch, x.numel() / batch);
    };
    if (p && z) run(sampler_update_kernel<T, true, true>);
    else if (p) run(sampler_update_kernel<T, true, false>);
    else if (z) run(sampler_update_kernel<T, false, true>);
    else run(sampler_update_kernel<T, false, false>);
  });
  return {out, x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("sampler_update", &sampler_update_cpu);
}

}  // namespace ddpm_fast
