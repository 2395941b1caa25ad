// CPU kernels of linear_attention, the core of the seed's LinearAttention.
//
// Per batch b and head h, with q, k, v the (d, n) slices of qkv (d = dim_head, n = H * W):
//   Sq = softmax over d of q (per position), K = softmax over n of k (per channel),
//   ctx = scale * K @ v^T (d x d), out = ctx^T @ Sq (d x n).
// A fused pass computes both softmaxes (the reference's strided softmax over d and its
// rearrange copies are the slow part); the two small contractions go to batched GEMM.
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

struct Views {
  at::Tensor sq, kk, v;  // (B*heads, d, n) each, contiguous
};

// Splits qkv (B, 3*heads*d, H, W) and computes both softmaxes: one parallel pass over (b, h).
Views softmaxes(const at::Tensor& qkv, int64_t heads) {
  const int64_t B = qkv.size(0), d = qkv.size(1) / (3 * heads), n = qkv.size(2) * qkv.size(3);
  const at::Tensor parts = qkv.reshape({B, 3, heads, d, n});
  Views out;
  out.sq = at::empty({B * heads, d, n}, qkv.options());
  out.kk = at::empty({B * heads, d, n}, qkv.options());
  out.v = parts.select(1, 2).reshape({B * heads, d, n});
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "linear_attention_softmax", [&] {
    using T = scalar_t;
    const T* base = qkv.data_ptr<T>();
    T* sq = out.sq.data_ptr<T>();
    T* kk = out.kk.data_ptr<T>();
    at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> col(n);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / heads, h = i % heads;
        const T* q = base + ((b * 3 + 0) * heads + h) * d * n;
        const T* k = base + ((b * 3 + 1) * heads + h) * d * n;
        softmax_pair<T>(q, k, sq + i * d * n, kk + i * d * n, d, n, col.data());
      }
    });
  });
  return out;
}

at::Tensor linear_attention_cpu(const at::Tensor& qkv_in, int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  const at::Tensor qkv = qkv_in.contiguous();
  const int64_t B = qkv.size(0), d = qkv.size(1) / (3 * heads);
  if (qkv.numel() == 0) return at::zeros({B, heads * d, qkv.size(2), qkv.size(3)}, qkv.options());
  const Views s = softmaxes(qkv, heads);
  const at::Tensor ctx = at::bmm(s.kk, s.v.transpose(1, 2)).mul_(scale);  // (B*h, d, e)
  const at::Tensor out = at::bmm(ctx.transpose(1, 2), s.sq);              // (B*h, e, n)
  return out.view({B, heads * d, qkv.size(2), qkv.size(3)});
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

at::Tensor linear_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv_in,
                                         int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  const at::Tensor qkv = qkv_in.contiguous();
  const int64_t B = qkv.size(0), d = qkv.size(1) / (3 * heads), n = qkv.size(2) * qkv.size(3);
  TORCH_CHECK(grad_out.numel() == B * heads * d * n, "linear_attention_backward: grad_out must have shape (",
              B, ", ", heads * d, ", ", qkv.size(2), ", ", qkv.size(3), "), got ", grad_out.sizes());
  at::Tensor grad_qkv = at::empty_like(qkv);
  if (qkv.numel() == 0) return grad_qkv;
  const Views s = softmaxes(qkv, heads);
  const at::Tensor dout = grad_out.contiguous().view({B * heads, d, n});
  const at::Tensor ctx = at::bmm(s.kk, s.v.transpose(1, 2)).mul_(scale);  // (B*h, d, e)
  const at::Tensor dsq = at::bmm(ctx, dout);                                // (B*h, d, n)
  const at::Tensor dctx = at::bmm(s.sq, dout.transpose(1, 2)).mul_(scale); // (B*h, d, e)
  const at::Tensor dk = at::bmm(dctx, s.v);                                 // (B*h, d, n)
  const at::Tensor dv = at::bmm(dctx.transpose(1, 2), s.kk);                // (B*h, e, n)
  grad_qkv.view({B, 3, heads, d, n}).select(1, 2).copy_(dv.view({B, heads, d, n}));
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "linear_attention_softmax_backward", [&] {
    using T = scalar_t;
    T* gbase = grad_qkv.data_ptr<T>();
    const T *sq = s.sq.data_ptr<T>(), *kk = s.kk.data_ptr<T>();
    const T *dsqp = dsq.data_ptr<T>(), *dkp = dk.data_ptr<T>();
    at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> col(n);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / heads, h = i % heads, off = i * d * n;
        T* gq = gbase + ((b * 3 + 0) * heads + h) * d * n;
        T* gk = gbase + ((b * 3 + 1) * heads + h) * d * n;
        softmax_pair_backward<T>(sq + off, dsqp + off, kk + off, dkp + off, gq, gk, d, n,
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
