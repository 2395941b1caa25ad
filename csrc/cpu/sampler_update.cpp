// CPU kernel of sampler_update, the one update step shared by the DDPM, DDIM and DPM-Solver++
// samplers, for any prediction type: per sample, the data prediction x0 (clipped or thresholded
// when asked) and an affine combination of up to five inputs. Memory bound: one read of each
// input, one write of each output (and one more read of x and m to threshold).
// Parallelisation: flat chunks of the whole batch, each walking the samples it overlaps so the
// inner loop is a plain combination with the sample's six coefficients held in registers.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../sampler_update.h"
#include "dispatch.h"
#include "isa.h"
#include "vector_math.h"

namespace ddpm_fast {
namespace {

// Elements [0, n) of one sample, m the model output: x0 = c5 x + c6 m, clamped to [-lim, lim]
// and divided by div when CLAMP (clipping: div = 1; thresholding: lim = div = s), then
// out = c0 x + c1 m + c2 x0 (+ c3 prev) (+ c4 noise). The absent inputs and the clamp are
// template switches, not branches, so that every variant vectorises; it is inlined into its
// caller, compiled for the active instruction-set level (isa.h).
template <typename T, bool PREV, bool NOISE, bool CLAMP>
DDPM_FAST_INLINE void combine(const T* __restrict x, const T* __restrict m,
                                   const T* __restrict prev, const T* __restrict noise,
                                   const T* __restrict c, T lim, T div, T* __restrict out,
                                   T* __restrict x0, int64_t n) {
  const T c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5], c6 = c[6];
  for (int64_t j = 0; j < n; ++j) {
    const T xv = x[j], mv = m[j];
    T p = c5 * xv + c6 * mv;
    if constexpr (CLAMP) p = std::min(std::max(p, -lim), lim) / div;
    T v = c0 * xv + c1 * mv + c2 * p;
    if constexpr (PREV) v += c3 * prev[j];
    if constexpr (NOISE) v += c4 * noise[j];
    out[j] = v;
    x0[j] = p;
  }
}

template <typename T, bool PREV, bool NOISE, bool CLAMP>
void sampler_update_kernel(const T* x, const T* m, const T* prev, const T* noise, const T* rows,
                           const T* lims, const T* divs, T* out, T* x0, int64_t batch, int64_t per_sample) {
  torch::stable::parallel_for(0, batch * per_sample, 16384, [&](int64_t begin, int64_t end) {
    dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
      int64_t i = begin;
      while (i < end) {
        const int64_t b = i / per_sample;
        const int64_t stop = std::min(end, (b + 1) * per_sample);
        combine<T, PREV, NOISE, CLAMP>(x + i, m + i, PREV ? prev + i : nullptr, NOISE ? noise + i : nullptr,
                                       rows + b * kSamplerCoefficients, lims[b], divs[b], out + i, x0 + i,
                                       stop - i);
        i = stop;
      }
    });
  });
}

// Dynamic thresholding's scale of each sample: s = clamp(quantile(|x0|, ratio), 1, max_value)
// with x0 = c5 x + c6 m, the quantile as torch.quantile's (linear between the two order
// statistics around ratio * (n - 1)). One sample per task; nth_element on a copy of |x0|.
template <typename T>
std::vector<T> threshold_scales(const T* x, const T* m, const T* rows, int64_t batch, int64_t per_sample,
                                double ratio, double max_value) {
  std::vector<T> scales(batch);
  const double position = ratio * double(per_sample - 1);
  const int64_t below = int64_t(position);
  const int64_t above = std::min(below + 1, per_sample - 1);
  const T weight = T(position - double(below));
  torch::stable::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> magnitudes(per_sample);
    for (int64_t b = begin; b < end; ++b) {
      const T c5 = rows[b * kSamplerCoefficients + 5], c6 = rows[b * kSamplerCoefficients + 6];
      const T* xb = x + b * per_sample;
      const T* mb = m + b * per_sample;
      for (int64_t j = 0; j < per_sample; ++j) {
        const T a = std::abs(c5 * xb[j] + c6 * mb[j]);
        // NaN ranks as +inf: nth_element needs a strict weak order (a NaN x0 stays NaN anyway).
        magnitudes[j] = std::isnan(a) ? std::numeric_limits<T>::infinity() : a;
      }
      std::nth_element(magnitudes.begin(), magnitudes.begin() + below, magnitudes.end());
      const T lo = magnitudes[below];
      // After nth_element every element past `below` is >= lo: the next order statistic is their least.
      const T hi = above == below ? lo : *std::min_element(magnitudes.begin() + below + 1, magnitudes.end());
      // torch.lerp's two-sided form, so that the scale matches torch.quantile's to the last bit.
      const T q = weight < T(0.5) ? lo + weight * (hi - lo) : hi - (hi - lo) * (T(1) - weight);
      scales[b] = std::min(std::max(q, T(1)), T(max_value));
    }
  });
  return scales;
}

// The (B, 7) coefficient rows of the batch, coefs[step[b]] in T: a plain loop, as the stable ABI
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

std::tuple<Tensor, Tensor> sampler_update_cpu(const Tensor& x_in, const Tensor& m_in,
                                              const std::optional<Tensor>& prev_in,
                                              const std::optional<Tensor>& noise_in, const Tensor& step,
                                              const Tensor& coefs, double clip_sample_range,
                                              double dynamic_thresholding_ratio, double sample_max_value) {
  check_sampler_update_args(x_in, m_in, prev_in, noise_in, step, coefs, clip_sample_range,
                            dynamic_thresholding_ratio, sample_max_value);
  check_range("sampler_update", "step", step, coefs.size(0));
  const auto format = per_sample_format(x_in, {&m_in, present(prev_in), present(noise_in)});
  const Tensor x = as_contiguous(x_in, format), m = as_contiguous(m_in, format);
  const auto prev = in_format(prev_in, format), noise = in_format(noise_in, format);
  Tensor out = empty(x.sizes(), x, x.scalar_type(), format);
  Tensor x0 = empty(x.sizes(), x, x.scalar_type(), format);
  const int64_t batch = x.size(0);
  if (batch == 0 || x.numel() == 0) return {out, x0};
  const int64_t per_sample = x.numel() / batch;
  dispatch_floating(x.scalar_type(), "sampler_update", [&]<typename T>() {
    const std::vector<T> rows = gather_rows<T>(coefs, step, batch);
    const bool threshold = dynamic_thresholding_ratio > 0, clamp = threshold || clip_sample_range > 0;
    // Clipping: lim = range, div = 1 for every sample; thresholding: lim = div = the sample's scale.
    std::vector<T> lims(batch, T(clip_sample_range)), divs(batch, T(1));
    if (threshold) {
      lims = threshold_scales<T>(x.const_data_ptr<T>(), m.const_data_ptr<T>(), rows.data(), batch, per_sample,
                                 dynamic_thresholding_ratio, sample_max_value);
      divs = lims;
    }
    const T* p = prev.has_value() ? prev->const_data_ptr<T>() : nullptr;
    const T* z = noise.has_value() ? noise->const_data_ptr<T>() : nullptr;
    auto run = [&](auto kernel) {
      kernel(x.const_data_ptr<T>(), m.const_data_ptr<T>(), p, z, rows.data(), lims.data(), divs.data(),
             out.mutable_data_ptr<T>(), x0.mutable_data_ptr<T>(), batch, per_sample);
    };
    // The eight variants: prev_x0 and noise present or not, x0 clamped or not.
    auto with_clamp = [&]<bool PREV, bool NOISE>() {
      if (clamp) run(sampler_update_kernel<T, PREV, NOISE, true>);
      else run(sampler_update_kernel<T, PREV, NOISE, false>);
    };
    if (p && z) with_clamp.template operator()<true, true>();
    else if (p) with_clamp.template operator()<true, false>();
    else if (z) with_clamp.template operator()<false, true>();
    else with_clamp.template operator()<false, false>();
  });
  return {out, x0};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("sampler_update", TORCH_BOX(&sampler_update_cpu));
}

}  // namespace ddpm_fast
