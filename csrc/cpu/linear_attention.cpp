// CPU kernels of linear_attention, the core of the seed's LinearAttention.
//
// Per batch b and head h, with q, k, v the (d, n) slices of qkv (d = dim_head, n = H * W):
//   Sq = softmax over d of q (per position), K = softmax over n of k (per channel),
//   ctx = scale * K @ v^T (d x d), out = ctx^T @ Sq (d x n).
// Parallelisation: one task per (b, h). Each task keeps its softmaxed q and k in thread-local
// buffers (2 * d * n floats, L2-resident for the seed's d = 32, n = 784) and runs both small
// contractions there as single-threaded GEMMs, so nothing but the output is written to
// memory: batch-sized temporaries cost more in page faults than the arithmetic.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "vector_math.h"

namespace ddpm_fast {
namespace {

// Softmaxes of one (b, h): q (d, n) over d into sq, k (d, n) over n into kk. Rows of q, k are
// contiguous (NCHW qkv); the column-wise softmax of q runs as row sweeps so it vectorises.
template <typename T>
DDPM_FAST_SIMD_CLONES void softmax_pair(const T* q, const T* k, T* sq, T* kk, int64_t d, int64_t n, T* col) {
  // q: column max, then exp and column sums, then normalise.
  std::fill(col, col + n, -std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) col[j] = std::max(col[j], q[i * n + j]);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) sq[i * n + j] = fast_exp(q[i * n + j] - col[j]);
  std::fill(col, col + n, T(0));
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) col[j] += sq[i * n + j];
  for (int64_t j = 0; j < n; ++j) col[j] = T(1) / col[j];
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) sq[i * n + j] *= col[j];
  // k: a plain row softmax.
  for (int64_t i = 0; i < d; ++i) {
    const T* kr = k + i * n;
    T* out = kk + i * n;
    T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) m = std::max(m, kr[j]);
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += (out[j] = fast_exp(kr[j] - m));
    const T inv = T(1) / s;
    for (int64_t j = 0; j < n; ++j) out[j] *= inv;
  }
}

// Small per-task GEMMs through ATen (oneDNN/MKL blocks them far better than plain loops; inside
// a parallel_for they run on the calling thread). `a`, `b`, `out` are raw row-major buffers.
template <typename T>
at::Tensor as_matrix(const T* data, int64_t rows, int64_t cols) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// ctx (d, d) = scale * a (d, n) @ b (d, n)^T
template <typename T>
void scaled_outer(const T* a, const T* b, T* ctx, int64_t d, int64_t n, T scale) {
  at::Tensor out = as_matrix(ctx, d, d);
  at::mm_out(out, as_matrix(a, d, n), as_matrix(b, d, n).t());
  out.mul_(scale);
}

// out (d, n) = m^T @ a (transposed) or m @ a, with m (d, d), a (d, n)
template <typename T>
void combine_rows(const T* m, const T* a, T* out, int64_t d, int64_t n, bool transposed) {
  at::Tensor mm = as_matrix(m, d, d);
  at::Tensor o = as_matrix(out, d, n);
  at::mm_out(o, transposed ? mm.t() : mm, as_matrix(a, d, n));
}

// Pointers to the q, k, v slices of (b, h) in a (B, 3, heads, d, n) buffer.
template <typename T>
struct HeadSlices {
  T *q, *k, *v;
  HeadSlices(T* base, int64_t i, int64_t heads, int64_t d, int64_t n) {
    const int64_t b = i / heads, h = i % heads;
    q = base + ((b * 3 + 0) * heads + h) * d * n;
    k = base + ((b * 3 + 1) * heads + h) * d * n;
    v = base + ((b * 3 + 2) * heads + h) * d * n;
  }
};

at::Tensor linear_attention_cpu(const at::Tensor& qkv_in, int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  const at::Tensor qkv = qkv_in.contiguous();
  const int64_t B = qkv.size(0), d = qkv.size(1) / (3 * heads), n = qkv.size(2) * qkv.size(3);
  at::Tensor out = at::empty({B, heads * d, qkv.size(2), qkv.size(3)}, qkv.options());
  if (out.numel() == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "linear_attention", [&] {
    using T = scalar_t;
    T* base = const_cast<T*>(qkv.data_ptr<T>());
    T* out_base = out.data_ptr<T>();
    at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> sq(d * n), kk(d * n), ctx(d * d), col(n);
      for (int64_t i = begin; i < end; ++i) {
        const HeadSlices<T> in(base, i, heads, d, n);
        softmax_pair<T>(in.q, in.k, sq.data(), kk.data(), d, n, col.data());
        scaled_outer<T>(kk.data(), in.v, ctx.data(), d, n, T(scale));
        combine_rows<T>(ctx.data(), sq.data(), out_base + i * d * n, d, n, true);
      }
    });
  });
  return out;
}

// Softmax backward of one (b, h): dq = Sq * (dSq - sum_d Sq * dSq) per position, and
// dk = K * (dK - sum_n K * dK) per channel, written straight into grad_qkv's q and k slices.
template <typename T>
DDPM_FAST_SIMD_CLONES void softmax_pair_backward(const T* sq, const T* dsq, const T* kk, const T* dkk, T* dq, T* dk,
                           int64_t d, int64_t n, T* col) {
  std::fill(col, col + n, T(0));
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) col[j] += sq[i * n + j] * dsq[i * n + j];
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) dq[i * n + j] = sq[i * n + j] * (dsq[i * n + j] - col[j]);
  for (int64_t i = 0; i < d; ++i) {
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < n; ++j) dot += kk[i * n + j] * dkk[i * n + j];
    for (int64_t j = 0; j < n; ++j) dk[i * n + j] = kk[i * n + j] * (dkk[i * n + j] - dot);
  }
}

// Backward of one (b, h), with C' = scale * K v^T and g = grad_out:
//   dSq = C' g, dC' = scale * Sq g^T, dK = dC' v, dv = dC'^T K, then the two softmax backwards.
at::Tensor linear_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv_in,
                                         int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  const at::Tensor qkv = qkv_in.contiguous();
  const int64_t B = qkv.size(0), d = qkv.size(1) / (3 * heads), n = qkv.size(2) * qkv.size(3);
  TORCH_CHECK(grad_out.numel() == B * heads * d * n, "linear_attention_backward: grad_out must have shape (",
              B, ", ", heads * d, ", ", qkv.size(2), ", ", qkv.size(3), "), got ", grad_out.sizes());
  at::Tensor grad_qkv = at::empty_like(qkv);
  if (qkv.numel() == 0) return grad_qkv;
  const at::Tensor g = grad_out.contiguous();
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "linear_attention_backward", [&] {
    using T = scalar_t;
    T* base = const_cast<T*>(qkv.data_ptr<T>());
    T* grad_base = grad_qkv.data_ptr<T>();
    const T* g_base = g.data_ptr<T>();
    at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> sq(d * n), kk(d * n), dsq(d * n), dk(d * n), ctx(d * d), dctx(d * d), col(n);
      for (int64_t i = begin; i < end; ++i) {
        const HeadSlices<T> in(base, i, heads, d, n);
        const HeadSlices<T> grad(grad_base, i, heads, d, n);
        const T* go = g_base + i * d * n;
        softmax_pair<T>(in.q, in.k, sq.data(), kk.data(), d, n, col.data());
        scaled_outer<T>(kk.data(), in.v, ctx.data(), d, n, T(scale));
        combine_rows<T>(ctx.data(), go, dsq.data(), d, n, false);
        scaled_outer<T>(sq.data(), go, dctx.data(), d, n, T(scale));
        combine_rows<T>(dctx.data(), in.v, dk.data(), d, n, false);
        combine_rows<T>(dctx.data(), kk.data(), grad.v, d, n, true);
        softmax_pair_backward<T>(sq.data(), dsq.data(), kk.data(), dk.data(), grad.q, grad.k, d, n,
                                 col.data());
      }
    });
  });
  return grad_qkv;
}

}  // namespace

TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("linear_attention", &linear_attention_cpu);
  m.impl("linear_attention_backward", &linear_attention_backward_cpu);
}

}  // namespace ddpm_fast
