// CPU kernels of group_norm_act: GroupNorm, then x * (scale + 1) + shift, then an activation, in
// one pass over memory after the statistics, forward and backward, NCHW and channels_last.
//
// Notation: per sample n and group g, M = (C / G) * H * W elements; xhat = (x - mean) * rstd;
// z = xhat * weight + bias; u = z * (1 + scale) + shift; y = act(u). Per (n, c) the whole
// affine chain folds into y = act(a[n,c] * x + b[n,c]).
//
// Every kernel is templated on the storage type S (float, double, or bfloat16: storage.h) and
// computes in T = compute_t<S>: bfloat16 tensors are read and written as bfloat16, their
// statistics and arithmetic are float32, and mean and rstd are float32 tensors.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <numeric>
#include <vector>

#include "../checks.h"
#include "../group_norm_grads.h"
#include "activations.h"
#include "dispatch.h"
#include "isa.h"
#include "storage.h"
#include "vector_math.h"

namespace ddpm_fast {
namespace {

// Optional per-channel and per-(n, c) inputs, stored as S, read as T = compute_t<S> with their
// identity values when absent.
template <typename S>
struct Affine {
  using T = compute_t<S>;
  const S* weight;  // (C,) or null (= 1)
  const S* bias;    // (C,) or null (= 0)
  const S* scale;   // (N, C) or null (= 0, i.e. multiply by 1)
  const S* shift;   // (N, C) or null (= 0)
  int64_t C;
  T w(int64_t c) const { return weight ? load(weight[c]) : T(1); }
  T b(int64_t c) const { return bias ? load(bias[c]) : T(0); }
  T s1(int64_t n, int64_t c) const { return scale ? T(1) + load(scale[n * C + c]) : T(1); }
  T sh(int64_t n, int64_t c) const { return shift ? load(shift[n * C + c]) : T(0); }
  // y = act(a * x + b) with a, b folding the norm, the affine weights and scale/shift.
  void fold(int64_t n, int64_t c, T mean, T rstd, T* a, T* b) const {
    const T k = w(c) * s1(n, c);
    *a = rstd * k;
    *b = (this->b(c) - mean * rstd * w(c)) * s1(n, c) + sh(n, c);
  }
};

template <typename S>
const S* ptr_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? data<S>(*t) : nullptr;
}

std::optional<Tensor> contiguous_or_none(const std::optional<Tensor>& t) {
  return t.has_value() ? std::optional<Tensor>(as_contiguous(*t)) : std::nullopt;
}

// ---- vectorised inner loops, inlined into the callers' dispatch_isa (isa.h)

template <typename S, typename T = compute_t<S>>
DDPM_FAST_INLINE T sum_of(const S* x, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += load(x[j]);
  return s;
}

template <typename S, typename T = compute_t<S>>
DDPM_FAST_INLINE T squared_deviation_sum(const S* x, int64_t n, T mean) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += (load(x[j]) - mean) * (load(x[j]) - mean);
  return s;
}

template <typename S, Act A, typename T = compute_t<S>>
DDPM_FAST_INLINE void affine_act(const S* x, S* y, int64_t n, T a, T b) {
  for (int64_t j = 0; j < n; ++j) y[j] = store<S>(act_forward<A>(a * load(x[j]) + b));
}

// channels_last sweeps. A sample is HW rows of C channels; `rows` consecutive rows make one
// sweep of width W = rows * C, a whole number of vectors (see sweep_rows), so the inner loops
// run over W contiguous values with per-lane arrays replicated `rows` times and no ragged
// tail per row (with C = 28, a row alone is 1.75 AVX-512 vectors). Rows past the last full
// sweep go through the same loop with a narrower width.

// Rows per sweep: 16 / gcd(C, 16), so that rows * C is a multiple of 16 floats (8 doubles).
inline int64_t sweep_rows(int64_t C) { return 16 / std::gcd(C, int64_t(16)); }

// s1[k] += x - shift[k], s2[k] += (x - shift[k])^2 over `count` values of x, W lanes apart.
template <typename S, typename T = compute_t<S>>
DDPM_FAST_INLINE void shifted_sums(const S* __restrict x, int64_t count, int64_t W, const T* __restrict shift,
                                        T* __restrict s1, T* __restrict s2) {
  for (int64_t off = 0; off < count; off += W)
#pragma omp simd
    for (int64_t k = 0; k < W; ++k) {
      const T dev = load(x[off + k]) - shift[k];
      s1[k] += dev;
      s2[k] += dev * dev;
    }
}

// y = act(a[k] * x + b[k]) over `count` values, W lanes apart.
template <typename S, Act A, typename T = compute_t<S>>
DDPM_FAST_INLINE void sweep_affine_act(const S* __restrict x, S* __restrict y, int64_t count, int64_t W,
                                            const T* __restrict a, const T* __restrict b) {
  for (int64_t off = 0; off < count; off += W)
#pragma omp simd
    for (int64_t k = 0; k < W; ++k) y[off + k] = store<S>(act_forward<A>(a[k] * load(x[off + k]) + b[k]));
}

// Forward, NCHW: one task per (n, g), whose M elements are contiguous. Two-pass statistics
// (mean, then squared deviations) keep float32 accurate; the block is re-read from cache.
template <typename S, Act A, typename T = compute_t<S>>
void forward_nchw(const S* x, S* y, T* mean_out, T* rstd_out, const Affine<S>& p, int64_t N,
                  int64_t G, int64_t HW, double eps) {
  const int64_t C = p.C, Cg = C / G, M = Cg * HW;
  torch::stable::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
    dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / G, g = i % G;
        const S* xb = x + (n * C + g * Cg) * HW;
        const T mean = sum_of(xb, M) / T(M);
        const T rstd = T(1) / std::sqrt(squared_deviation_sum(xb, M, mean) / T(M) + T(eps));
        mean_out[i] = mean;
        rstd_out[i] = rstd;
        for (int64_t cl = 0; cl < Cg; ++cl) {
          T a, b;
          p.fold(n, g * Cg + cl, mean, rstd, &a, &b);
          const int64_t offset = (n * C + g * Cg + cl) * HW;
          affine_act<S, A>(x + offset, y + offset, HW, a, b);
        }
      }
    });
  });
}

// Forward, channels_last: one task per sample n, whose HW x C block is contiguous. The
// statistics take one pass: per-channel sums of x - x[0, c] and of its square (the shifted-data
// algorithm: with the shift close to the mean, the one-pass variance stays accurate in
// float32), combined per group in double. A second pass writes y.
template <typename S, Act A, typename T = compute_t<S>>
void forward_nhwc(const S* x, S* y, T* mean_out, T* rstd_out, const Affine<S>& p, int64_t N,
                  int64_t G, int64_t HW, double eps) {
  const int64_t C = p.C, Cg = C / G, rows = sweep_rows(C), W = rows * C;
  const int64_t swept = HW / rows * rows * C;  // values covered by full sweeps
  torch::stable::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> shift(W), s1(W), s2(W), a(W), b(W);
    dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
      for (int64_t n = begin; n < end; ++n) {
        const S* xn = x + n * HW * C;
        for (int64_t k = 0; k < W; ++k) shift[k] = load(xn[k % C]);
        std::fill(s1.begin(), s1.end(), T(0));
        std::fill(s2.begin(), s2.end(), T(0));
        shifted_sums<S>(xn, swept, W, shift.data(), s1.data(), s2.data());
        shifted_sums<S>(xn + swept, HW * C - swept, C, shift.data(), s1.data(), s2.data());
        for (int64_t g = 0; g < G; ++g) {
          // Per channel: S1 = sum(x - s), S2 = sum((x - s)^2); per group, with mu the mean,
          // sum((x - mu)^2) = S2 + 2 (s - mu) S1 + HW (s - mu)^2.
          double total = 0;
          for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
            double s1c = 0;
            for (int64_t r = 0; r < rows; ++r) s1c += s1[r * C + c];
            total += double(shift[c]) * HW + s1c;
          }
          const double mean = total / double(Cg * HW);
          double squares = 0;
          for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
            double s1c = 0, s2c = 0;
            for (int64_t r = 0; r < rows; ++r) s1c += s1[r * C + c], s2c += s2[r * C + c];
            const double offset = double(shift[c]) - mean;
            squares += s2c + 2 * offset * s1c + double(HW) * offset * offset;
          }
          const T rstd = T(1.0 / std::sqrt(std::max(squares, 0.0) / double(Cg * HW) + eps));
          mean_out[n * G + g] = T(mean);
          rstd_out[n * G + g] = rstd;
          for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) p.fold(n, c, T(mean), rstd, &a[c], &b[c]);
        }
        for (int64_t k = C; k < W; ++k) a[k] = a[k % C], b[k] = b[k % C];
        sweep_affine_act<S, A>(xn, y + n * HW * C, swept, W, a.data(), b.data());
        sweep_affine_act<S, A>(xn + swept, y + n * HW * C + swept, HW * C - swept, C, a.data(), b.data());
      }
    });
  });
}

std::tuple<Tensor, Tensor, Tensor> group_norm_act_cpu(
    const Tensor& x_in, int64_t num_groups, const std::optional<Tensor>& weight_in,
    const std::optional<Tensor>& bias_in, const std::optional<Tensor>& scale_in,
    const std::optional<Tensor>& shift_in, double eps, std::string_view act_name) {
  check_group_norm_args(x_in, num_groups, weight_in, bias_in, scale_in, shift_in);
  const Act act = parse_act(act_name);
  const bool nhwc = is_channels_last_only(x_in);
  const Tensor x = nhwc ? x_in : as_contiguous(x_in);
  const auto weight = contiguous_or_none(weight_in), bias = contiguous_or_none(bias_in);
  const auto scale = contiguous_or_none(scale_in), shift = contiguous_or_none(shift_in);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  Tensor y = torch::stable::empty_like(x);
  Tensor mean = empty({N, num_groups}, x, acc_dtype(x));
  Tensor rstd = empty({N, num_groups}, x, acc_dtype(x));
  if (x.numel() == 0) return {y, torch::stable::fill_(mean, 0.0), torch::stable::fill_(rstd, 0.0)};
  dispatch_floating_and_bf16(x.scalar_type(), "group_norm_act", [&]<typename S>() {
    using T = compute_t<S>;
    const Affine<S> p{ptr_or_null<S>(weight), ptr_or_null<S>(bias), ptr_or_null<S>(scale),
                      ptr_or_null<S>(shift), C};
    dispatch_act(act, [&]<Act A>() {
      (nhwc ? forward_nhwc<S, A> : forward_nchw<S, A>)(data<S>(x), mutable_data<S>(y), mutable_data<T>(mean),
                                                      mutable_data<T>(rstd), p, N, num_groups, HW, eps);
    });
  });
  return {y, mean, rstd};
}

// Backward. With du = dy * act'(u) and per-(n, c) sums sum_du = sum(du), sum_du_xhat =
// sum(du * xhat), and k = weight * (1 + scale):
//   dshift = sum_du, dscale = weight * sum_du_xhat + bias * sum_du,
//   dweight = sum_n (1 + scale) * sum_du_xhat, dbias = sum_n (1 + scale) * sum_du,
//   dx = rstd * (k * du - m1 - xhat * m2), m1 = sum_{c in g} k * sum_du / M,
//   m2 = sum_{c in g} k * sum_du_xhat / M.
// Pass 1 reduces the sums, pass 2 writes dx; both recompute u = k * xhat + ub (ub = bias *
// (1 + scale) + shift) rather than storing it.

template <typename T, Act A>
DDPM_FAST_INLINE T grad_u(T xhat, T dy, T k, T ub) {
  if constexpr (A == Act::kNone) {
    return dy;
  } else {
    return dy * act_derivative<A>(k * xhat + ub);
  }
}

// One channel row (NCHW): the two sums of pass 1.
template <typename S, Act A, typename T = compute_t<S>>
DDPM_FAST_INLINE void row_grad_sums(const S* x, const S* dy, int64_t n, T mean, T rstd, T k,
                                         T ub, T* sum_du, T* sum_du_xhat) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    const T xhat = (load(x[j]) - mean) * rstd;
    const T du = grad_u<T, A>(xhat, load(dy[j]), k, ub);
    s1 += du;
    s2 += du * xhat;
  }
  *sum_du = s1;
  *sum_du_xhat = s2;
}

template <typename S, Act A, typename T = compute_t<S>>
DDPM_FAST_INLINE void row_grad_input(const S* x, const S* dy, S* dx, int64_t n, T mean,
                                          T rstd, T k, T ub, T m1, T m2) {
  for (int64_t j = 0; j < n; ++j) {
    const T xhat = (load(x[j]) - mean) * rstd;
    dx[j] = store<S>(rstd * (k * grad_u<T, A>(xhat, load(dy[j]), k, ub) - m1 - xhat * m2));
  }
}

// One sample (channels_last): per-channel vectors mean, rstd, k, ub (and m1, m2 in pass 2).
template <typename S, Act A, typename T = compute_t<S>>
DDPM_FAST_INLINE void channel_grad_sums(const S* x, const S* dy, int64_t HW, int64_t C,
                                             const T* mean, const T* rstd, const T* k,
                                             const T* ub, T* sum_du, T* sum_du_xhat) {
  for (int64_t j = 0; j < HW; ++j)
    for (int64_t c = 0; c < C; ++c) {
      const T xhat = (load(x[j * C + c]) - mean[c]) * rstd[c];
      const T du = grad_u<T, A>(xhat, load(dy[j * C + c]), k[c], ub[c]);
      sum_du[c] += du;
      sum_du_xhat[c] += du * xhat;
    }
}

template <typename S, Act A, typename T = compute_t<S>>
DDPM_FAST_INLINE void channel_grad_input(const S* x, const S* dy, S* dx, int64_t HW,
                                              int64_t C, const T* mean, const T* rstd,
                                              const T* k, const T* ub, const T* m1,
                                              const T* m2) {
  for (int64_t j = 0; j < HW; ++j)
    for (int64_t c = 0; c < C; ++c) {
      const T xhat = (load(x[j * C + c]) - mean[c]) * rstd[c];
      const T du = grad_u<T, A>(xhat, load(dy[j * C + c]), k[c], ub[c]);
      dx[j * C + c] = store<S>(rstd[c] * (k[c] * du - m1[c] - xhat * m2[c]));
    }
}

template <typename S, Act A>
struct Backward {
  using T = compute_t<S>;
  const S *dy, *x;
  const T *mean, *rstd;
  Affine<S> p;
  int64_t N, G, HW;
  S* dx;
  T* sum_du;       // (N, C)
  T* sum_du_xhat;  // (N, C)

  int64_t Cg() const { return p.C / G; }
  T k(int64_t n, int64_t c) const { return p.w(c) * p.s1(n, c); }
  T ub(int64_t n, int64_t c) const { return p.b(c) * p.s1(n, c) + p.sh(n, c); }

  // (m1, m2) of every group of sample n, from the per-channel sums.
  void group_terms(int64_t n, T* m1, T* m2) const {
    const T M = T(Cg() * HW);
    for (int64_t g = 0; g < G; ++g) {
      T a = 0, b = 0;
      for (int64_t c = g * Cg(); c < (g + 1) * Cg(); ++c) {
        a += k(n, c) * sum_du[n * p.C + c];
        b += k(n, c) * sum_du_xhat[n * p.C + c];
      }
      m1[g] = a / M;
      m2[g] = b / M;
    }
  }

  void run_nchw() const {
    const int64_t C = p.C;
    torch::stable::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t n = i / C, c = i % C, g = c / Cg();
          row_grad_sums<S, A>(x + i * HW, dy + i * HW, HW, mean[n * G + g], rstd[n * G + g],
                              k(n, c), ub(n, c), sum_du + i, sum_du_xhat + i);
        }
      });
    });
    torch::stable::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> m1(G), m2(G);
      int64_t terms_of = -1;
      dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t n = i / C, c = i % C, g = c / Cg();
          if (terms_of != n) {
            group_terms(n, m1.data(), m2.data());
            terms_of = n;
          }
          row_grad_input<S, A>(x + i * HW, dy + i * HW, dx + i * HW, HW, mean[n * G + g],
                               rstd[n * G + g], k(n, c), ub(n, c), m1[g], m2[g]);
        }
      });
    });
  }

  void run_nhwc() const {
    const int64_t C = p.C;
    torch::stable::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> m1(G), m2(G), cmean(C), crstd(C), ck(C), cub(C), cm1(C), cm2(C);
      dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
        for (int64_t n = begin; n < end; ++n) {
          for (int64_t c = 0; c < C; ++c) {
            const int64_t g = c / Cg();
            cmean[c] = mean[n * G + g];
            crstd[c] = rstd[n * G + g];
            ck[c] = k(n, c);
            cub[c] = ub(n, c);
          }
          const int64_t offset = n * HW * C;
          channel_grad_sums<S, A>(x + offset, dy + offset, HW, C, cmean.data(), crstd.data(),
                                  ck.data(), cub.data(), sum_du + n * C, sum_du_xhat + n * C);
          group_terms(n, m1.data(), m2.data());
          for (int64_t c = 0; c < C; ++c) {
            cm1[c] = m1[c / Cg()];
            cm2[c] = m2[c / Cg()];
          }
          channel_grad_input<S, A>(x + offset, dy + offset, dx + offset, HW, C, cmean.data(),
                                   crstd.data(), ck.data(), cub.data(), cm1.data(), cm2.data());
        }
      });
    });
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> group_norm_act_backward_cpu(
    const Tensor& grad_y, const Tensor& x_in, const Tensor& mean_in, const Tensor& rstd_in,
    int64_t num_groups, const std::optional<Tensor>& weight_in, const std::optional<Tensor>& bias_in,
    const std::optional<Tensor>& scale_in, const std::optional<Tensor>& shift_in, std::string_view act_name) {
  check_group_norm_args(x_in, num_groups, weight_in, bias_in, scale_in, shift_in);
  check_same_layout("group_norm_act_backward", x_in, grad_y, "x", "grad_y");
  const Act act = parse_act(act_name);
  const bool nhwc = is_channels_last_only(x_in);
  const auto format = nhwc ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
  const Tensor x = as_contiguous(x_in, format), dy = as_contiguous(grad_y, format);
  const ScalarType stats = acc_dtype(x);
  const Tensor mean = as_contiguous(as_dtype(mean_in, stats));
  const Tensor rstd = as_contiguous(as_dtype(rstd_in, stats));
  const auto weight = contiguous_or_none(weight_in), bias = contiguous_or_none(bias_in);
  const auto scale = contiguous_or_none(scale_in), shift = contiguous_or_none(shift_in);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  Tensor dx = torch::stable::empty_like(x);
  Tensor sum_du = zeros({N, C}, x, stats);
  Tensor sum_du_xhat = zeros({N, C}, x, stats);
  if (x.numel() > 0) {
    dispatch_floating_and_bf16(x.scalar_type(), "group_norm_act_backward", [&]<typename S>() {
      using T = compute_t<S>;
      const Affine<S> p{ptr_or_null<S>(weight), ptr_or_null<S>(bias), ptr_or_null<S>(scale),
                        ptr_or_null<S>(shift), C};
      dispatch_act(act, [&]<Act A>() {
        const Backward<S, A> bw{data<S>(dy), data<S>(x), data<T>(mean), data<T>(rstd), p, N, num_groups, HW,
                                mutable_data<S>(dx), mutable_data<T>(sum_du), mutable_data<T>(sum_du_xhat)};
        nhwc ? bw.run_nhwc() : bw.run_nchw();
      });
    });
  }
  // The parameter gradients in the parameters' dtype, from sums accumulated in float32.
  auto [dweight, dbias, dscale, dshift] = group_norm_parameter_grads(
      as_dtype(sum_du, x.scalar_type()), as_dtype(sum_du_xhat, x.scalar_type()), weight, bias, scale, shift);
  return {dx, dweight, dbias, dscale, dshift};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("group_norm_act", TORCH_BOX(&group_norm_act_cpu));
  m.impl("group_norm_act_backward", TORCH_BOX(&group_norm_act_backward_cpu));
}

}  // namespace ddpm_fast
