// CPU kernels of linear_attention, the core of the seed's LinearAttention.
//
// Per batch b and head h, with q, k, v the (d, n) slices of qkv (d = dim_head, n = H * W):
//   Sq = softmax over d of q (per position), K = softmax over n of k (per channel),
//   ctx = scale * K @ v^T (d x d), out = ctx^T @ Sq (d x n).
// Parallelisation: one task per (b, h). Each task works in thread-local scratch rows (a few
// d x n blocks, L2-resident for the seed's d = 32, n = 784) and runs both small contractions
// there with the register-blocked GEMMs of small_gemm.h, so nothing but the output is written
// to memory: batch-sized temporaries cost more in page faults than the arithmetic. Scratch
// rows are padded to whole vectors with zeros (see small_gemm.h); v and grad_out are copied
// in once per task, as rows and transposed.
//
// Storage: the kernels are templated on the tensors' storage type S and compute in
// T = compute_t<S> (storage.h). float and double are read and written in place; bfloat16 is
// widened to float as it enters a task's scratch (q and k into Scratch::qk) and each task's
// outputs are rounded back from Scratch::staged, so every softmax and contraction runs in float.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "dispatch.h"
#include "isa.h"
#include "small_gemm.h"
#include "vector_math.h"

namespace ddpm_fast {
namespace {

// The q, k, v slices of one (b, h): (d, n) each, rows `ld` apart.
template <typename T>
struct HeadSlices {
  T *q, *k, *v;
  int64_t ld;
  // Slices of task i = b * heads + h in a (B, 3, heads, d, n) buffer.
  HeadSlices(T* base, int64_t i, int64_t heads, int64_t d, int64_t n) : ld(n) {
    const int64_t b = i / heads, h = i % heads;
    q = base + ((b * 3 + 0) * heads + h) * d * n;
    k = base + ((b * 3 + 1) * heads + h) * d * n;
    v = base + ((b * 3 + 2) * heads + h) * d * n;
  }

  // Three consecutive (d, n) blocks at base.
  HeadSlices(T* base, int64_t d, int64_t n) : q(base), k(base + d * n), v(base + 2 * d * n), ld(n) {}
};

// Whether storage type S is computed in a wider type (bfloat16 in float).
template <typename S>
constexpr bool widens = !std::is_same_v<S, compute_t<S>>;

// One task's scratch, as padded rows (see small_gemm.h): (d, ld) blocks along positions and
// (n, ldd) blocks along channels, ld and ldd being n and d padded to whole vectors. `qk` holds
// q and k as compute rows when they are not read in place (projected from x, or widened from
// bfloat16); `staged` holds a widening task's outputs, (d, n) blocks, until they are rounded.
template <typename T>
struct Scratch {
  int64_t ld, ldd;
  std::vector<T> sq, kk, v_t, ctx, col;      // forward
  std::vector<T> v, g, g_t, dsq, dk, dctx;  // backward only
  std::vector<T> qk, staged;
  Scratch(int64_t d, int64_t n, bool backward, bool with_qk, bool staging)
      : ld(padded_length<T>(n)), ldd(padded_length<T>(d)), sq(d * ld), kk(d * ld), v_t(n * ldd), ctx(d * ldd),
        col(ld) {
    if (backward) {
      for (auto* block : {&v, &g, &dsq, &dk}) block->assign(d * ld, T(0));
      g_t.assign(n * ldd, T(0));
      dctx.assign(d * ldd, T(0));
    }
    if (with_qk) qk.assign(2 * d * ld, T(0));
    if (staging) staged.assign((backward ? 3 : 1) * d * n, T(0));
  }
};

// (d, n) rows of storage type S, `ld_src` apart, into padded compute rows of stride ld (the
// padding stays zero).
template <typename S, typename T>
DDPM_FAST_INLINE void copy_rows(const S* src, int64_t ld_src, T* rows, int64_t d, int64_t n, int64_t ld) {
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) rows[i * ld + j] = load(src[i * ld_src + j]);
}

// (d, n) rows of storage type S, `ld_src` apart, transposed into (n, ldd) padded compute rows.
template <typename S, typename T>
DDPM_FAST_INLINE void transpose_rows(const S* src, int64_t ld_src, T* rows_t, int64_t d, int64_t n, int64_t ldd) {
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) rows_t[j * ldd + i] = load(src[i * ld_src + j]);
}

// Where a task writes output values meant for `out`: out itself when S is the compute type,
// else the staged buffer, which round_output() then rounds into out.
template <typename S, typename T>
DDPM_FAST_INLINE T* output_for(S* out, std::vector<T>& staged) {
  if constexpr (widens<S>) return staged.data();
  else return out;
}
template <typename S, typename T>
DDPM_FAST_INLINE void round_output(const T* staged, S* out, int64_t count) {
  if constexpr (widens<S>)
    for (int64_t i = 0; i < count; ++i) out[i] = store<S>(staged[i]);
}

// The q and k slices as compute rows: read in place when S is the compute type, else widened
// into s.qk (whose rows are s.ld apart).
template <typename S, typename T>
DDPM_FAST_INLINE HeadSlices<const T> compute_qk(HeadSlices<const S> in, Scratch<T>& s, int64_t d, int64_t n) {
  if constexpr (widens<S>) {
    copy_rows(in.q, in.ld, s.qk.data(), d, n, s.ld);
    copy_rows(in.k, in.ld, s.qk.data() + d * s.ld, d, n, s.ld);
    return HeadSlices<const T>(s.qk.data(), d, s.ld);
  } else {
    return in;
  }
}

template <typename T>
DDPM_FAST_INLINE void scale_in_place(T* x, int64_t count, T scale) {
  for (int64_t i = 0; i < count; ++i) x[i] *= scale;
}

// Softmaxes of one (b, h): q (d, n) over d into sq, k (d, n) over n into kk (q and k rows
// ld_in apart; sq and kk padded rows of stride ld whose padding stays zero). The column-wise softmax of q runs as row sweeps so
// it vectorises.
template <typename T>
DDPM_FAST_INLINE void softmax_pair(const T* q, const T* k, int64_t ld_in, T* sq, T* kk, int64_t d, int64_t n,
                                   int64_t ld, T* col) {
  // q: column max, then exp and column sums, then normalise.
  std::fill(col, col + n, -std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) col[j] = std::max(col[j], q[i * ld_in + j]);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) sq[i * ld + j] = fast_exp(q[i * ld_in + j] - col[j]);
  std::fill(col, col + n, T(0));
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) col[j] += sq[i * ld + j];
  for (int64_t j = 0; j < n; ++j) col[j] = T(1) / col[j];
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) sq[i * ld + j] *= col[j];
  // k: a plain row softmax.
  for (int64_t i = 0; i < d; ++i) {
    const T* kr = k + i * ld_in;
    T* out = kk + i * ld;
    T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) m = kr[j] > m ? kr[j] : m;  // std::max here stays scalar
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += (out[j] = fast_exp(kr[j] - m));
    const T inv = T(1) / s;
    for (int64_t j = 0; j < n; ++j) out[j] *= inv;
  }
}

// Softmax backward of one (b, h): dq = Sq * (dSq - sum_d Sq * dSq) per position, and
// dk = K * (dK - sum_n K * dK) per channel; sq, dsq, kk, dkk are padded rows of stride ld,
// dq and dk grad_qkv's q and k slices.
template <typename T>
DDPM_FAST_INLINE void softmax_pair_backward(const T* sq, const T* dsq, const T* kk, const T* dkk, T* dq, T* dk,
                                            int64_t d, int64_t n, int64_t ld, T* col) {
  std::fill(col, col + n, T(0));
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) col[j] += sq[i * ld + j] * dsq[i * ld + j];
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < n; ++j) dq[i * n + j] = sq[i * ld + j] * (dsq[i * ld + j] - col[j]);
  for (int64_t i = 0; i < d; ++i) {
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < n; ++j) dot += kk[i * ld + j] * dkk[i * ld + j];
    for (int64_t j = 0; j < n; ++j) dk[i * n + j] = kk[i * ld + j] * (dkk[i * ld + j] - dot);
  }
}

// Forward of one (b, h) from q and k (rows ld_in apart) and v^T already in s.v_t:
// ctx = scale * K v^T (d x d), then out = ctx^T Sq (d x n).
template <CpuIsa I, typename T>
DDPM_FAST_INLINE void attend(const T* q, const T* k, int64_t ld_in, T* out, Scratch<T>& s, int64_t d, int64_t n,
                             T scale) {
  softmax_pair<T>(q, k, ld_in, s.sq.data(), s.kk.data(), d, n, s.ld, s.col.data());
  small_gemm<vector_bytes<I>>(s.kk.data(), s.ld, 1, s.v_t.data(), s.ldd, s.ctx.data(), s.ldd, d, n, d);
  scale_in_place<T>(s.ctx.data(), d * s.ldd, scale);
  small_gemm<vector_bytes<I>>(s.ctx.data(), 1, s.ldd, s.sq.data(), s.ld, out, n, d, d, n);
}

template <CpuIsa I, typename S, typename T = compute_t<S>>
DDPM_FAST_INLINE void attend_head(HeadSlices<const S> in, S* out, Scratch<T>& s, int64_t d, int64_t n, T scale) {
  transpose_rows(in.v, in.ld, s.v_t.data(), d, n, s.ldd);
  const HeadSlices<const T> qk = compute_qk(in, s, d, n);
  attend<I, T>(qk.q, qk.k, qk.ld, output_for(out, s.staged), s, d, n, scale);
  round_output(s.staged.data(), out, d * n);
}

// The head's slice of grad_out, channel e of position j at g[e * c_stride + j * j_stride]
// (NCHW or channels_last), into s.g as (d, ld) rows and s.g_t as (n, ldd) rows.
template <typename S, typename T>
DDPM_FAST_INLINE void load_grad(const S* g, int64_t c_stride, int64_t j_stride, Scratch<T>& s, int64_t d,
                                int64_t n) {
  if (j_stride == 1) {
    copy_rows(g, c_stride, s.g.data(), d, n, s.ld);
    transpose_rows(g, c_stride, s.g_t.data(), d, n, s.ldd);
    return;
  }
  copy_rows(g, j_stride, s.g_t.data(), n, d, s.ldd);  // (n, d) rows j_stride apart
  transpose_rows(g, j_stride, s.g.data(), n, d, s.ld);
}

// The gradient slices a backward task writes: grad's own when S is the compute type, else the
// three blocks of s.staged, which round_grads() then rounds into grad.
template <typename S, typename T>
DDPM_FAST_INLINE HeadSlices<T> grads_for(HeadSlices<S> grad, Scratch<T>& s, int64_t d, int64_t n) {
  if constexpr (widens<S>) return HeadSlices<T>(s.staged.data(), d, n);
  else return grad;
}
template <typename S, typename T>
DDPM_FAST_INLINE void round_grads(const Scratch<T>& s, HeadSlices<S> grad, int64_t d, int64_t n) {
  const T* staged = s.staged.data();
  round_output(staged, grad.q, d * n);
  round_output(staged + d * n, grad.k, d * n);
  round_output(staged + 2 * d * n, grad.v, d * n);
}

// Backward of one (b, h) from q and k (rows ld_in apart) and v, v^T, g = grad_out, g^T
// already in s, with C' = scale * K v^T:
//   dSq = C' g, dC' = scale * Sq g^T, dK = dC' v, dv = dC'^T K, then the two softmax backwards.
template <CpuIsa I, typename T>
DDPM_FAST_INLINE void attend_backward(const T* q, const T* k, int64_t ld_in, HeadSlices<T> grad, Scratch<T>& s,
                                      int64_t d, int64_t n, T scale) {
  const int64_t ld = s.ld, ldd = s.ldd;
  softmax_pair<T>(q, k, ld_in, s.sq.data(), s.kk.data(), d, n, ld, s.col.data());
  small_gemm<vector_bytes<I>>(s.kk.data(), ld, 1, s.v_t.data(), ldd, s.ctx.data(), ldd, d, n, d);
  scale_in_place<T>(s.ctx.data(), d * ldd, scale);
  small_gemm<vector_bytes<I>>(s.ctx.data(), ldd, 1, s.g.data(), ld, s.dsq.data(), ld, d, d, n);
  small_gemm<vector_bytes<I>>(s.sq.data(), ld, 1, s.g_t.data(), ldd, s.dctx.data(), ldd, d, n, d);
  scale_in_place<T>(s.dctx.data(), d * ldd, scale);
  small_gemm<vector_bytes<I>>(s.dctx.data(), ldd, 1, s.v.data(), ld, s.dk.data(), ld, d, d, n);
  small_gemm<vector_bytes<I>>(s.dctx.data(), 1, ldd, s.kk.data(), ld, grad.v, n, d, d, n);
  softmax_pair_backward<T>(s.sq.data(), s.dsq.data(), s.kk.data(), s.dk.data(), grad.q, grad.k, d, n, ld,
                           s.col.data());
}

template <CpuIsa I, typename S, typename T = compute_t<S>>
DDPM_FAST_INLINE void attend_head_backward(HeadSlices<const S> in, HeadSlices<S> grad, const S* grad_out,
                                           Scratch<T>& s, int64_t d, int64_t n, T scale) {
  copy_rows(in.v, in.ld, s.v.data(), d, n, s.ld);
  transpose_rows(in.v, in.ld, s.v_t.data(), d, n, s.ldd);
  load_grad(grad_out, n, 1, s, d, n);
  const HeadSlices<const T> qk = compute_qk(in, s, d, n);
  attend_backward<I, T>(qk.q, qk.k, qk.ld, grads_for(grad, s, d, n), s, d, n, scale);
  round_grads(s, grad, d, n);
}

Tensor linear_attention_cpu(const Tensor& qkv_in, int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  const Tensor qkv = as_contiguous(qkv_in);
  const int64_t B = qkv.size(0), d = qkv.size(1) / (3 * heads), n = qkv.size(2) * qkv.size(3);
  Tensor out = empty({B, heads * d, qkv.size(2), qkv.size(3)}, qkv, qkv.scalar_type());
  if (out.numel() == 0) return torch::stable::zero_(out);
  dispatch_floating_and_bf16(qkv.scalar_type(), "linear_attention", [&]<typename S>() {
    using T = compute_t<S>;
    const S* base = data<S>(qkv);
    S* out_base = mutable_data<S>(out);
    torch::stable::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
      Scratch<T> scratch(d, n, /*backward=*/false, /*with_qk=*/widens<S>, /*staging=*/widens<S>);
      dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
        for (int64_t i = begin; i < end; ++i)
          attend_head<I, S>(HeadSlices<const S>(base, i, heads, d, n), out_base + i * d * n, scratch, d, n,
                            T(scale));
      });
    });
  });
  return out;
}

Tensor linear_attention_backward_cpu(const Tensor& grad_out, const Tensor& qkv_in,
                                     int64_t heads, double scale) {
  check_linear_attention_args(qkv_in, heads);
  const Tensor qkv = as_contiguous(qkv_in);
  const int64_t B = qkv.size(0), d = qkv.size(1) / (3 * heads), n = qkv.size(2) * qkv.size(3);
  DDPM_CHECK(grad_out.numel() == B * heads * d * n, "linear_attention_backward: grad_out must have shape (",
              B, ", ", heads * d, ", ", qkv.size(2), ", ", qkv.size(3), "), got ", shape_string(grad_out.sizes()));
  DDPM_CHECK(grad_out.scalar_type() == qkv.scalar_type(), "linear_attention_backward: grad_out must have qkv's "
             "dtype ", qkv.scalar_type(), ", got ", grad_out.scalar_type());
  Tensor grad_qkv = torch::stable::empty_like(qkv);
  if (qkv.numel() == 0) return grad_qkv;
  const Tensor g = as_contiguous(grad_out);
  dispatch_floating_and_bf16(qkv.scalar_type(), "linear_attention_backward", [&]<typename S>() {
    using T = compute_t<S>;
    const S* base = data<S>(qkv);
    S* grad_base = mutable_data<S>(grad_qkv);
    const S* g_base = data<S>(g);
    torch::stable::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
      Scratch<T> scratch(d, n, /*backward=*/true, /*with_qk=*/widens<S>, /*staging=*/widens<S>);
      dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
        for (int64_t i = begin; i < end; ++i)
          attend_head_backward<I, S>(HeadSlices<const S>(base, i, heads, d, n),
                                     HeadSlices<S>(grad_base, i, heads, d, n), g_base + i * d * n, scratch, d, n,
                                     T(scale));
      });
    });
  });
  return grad_qkv;
}

// ---- projected_linear_attention: the same per-(b, h) work with q, k, v projected from x
// in scratch, so the (B, 3 * heads * d, H, W) qkv tensor, three times the output, never
// reaches memory.

// Sample b of x, (C, n) with the given strides (NCHW or channels_last), into padded compute rows.
template <typename S, typename T>
DDPM_FAST_INLINE void gather_sample(const S* x, int64_t c_stride, int64_t j_stride, T* rows, int64_t C, int64_t n,
                                    int64_t ld) {
  if (j_stride == 1) {
    copy_rows(x, c_stride, rows, C, n, ld);
    return;
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < C; ++c) rows[c * ld + j] = load(x[j * j_stride + c * c_stride]);
}

// The q and k of head h, each (d x C) rows of w times the gathered sample (C x ld), into two
// (d, ld) blocks of qk; v^T straight into s.v_t as the sample^T times the head's block of
// w_v_t (C, ldd), so it needs no transpose.
template <CpuIsa I, typename T>
DDPM_FAST_INLINE void project_head(const T* w, const T* w_v_t, const T* sample, T* qk, Scratch<T>& s,
                                   int64_t heads, int64_t h, int64_t d, int64_t C, int64_t n) {
  for (int64_t part = 0; part < 2; ++part)
    small_gemm<vector_bytes<I>>(w + (part * heads + h) * d * C, C, 1, sample, s.ld, qk + part * d * s.ld, s.ld, d, C, n);
  small_gemm<vector_bytes<I>>(sample, 1, s.ld, w_v_t + h * C * s.ldd, s.ldd, s.v_t.data(), s.ldd, n, C, d);
}

// Forward of one (b, h) from the gathered sample, q and k projected into s.qk.
template <CpuIsa I, typename S, typename T = compute_t<S>>
DDPM_FAST_INLINE void project_and_attend_head(const T* w, const T* w_v_t, const T* sample, S* out, Scratch<T>& s,
                                              int64_t heads, int64_t h, int64_t d, int64_t C, int64_t n, T scale) {
  T* qk = s.qk.data();
  project_head<I, T>(w, w_v_t, sample, qk, s, heads, h, d, C, n);
  attend<I, T>(qk, qk + d * s.ld, s.ld, output_for(out, s.staged), s, d, n, scale);
  round_output(s.staged.data(), out, d * n);
}

// Backward of one (b, h): the forward's projections plus v's rows (dK needs them), the head's
// slice of grad_out (g, strides g_c and g_j), then the shared backward into grad's slices.
template <CpuIsa I, typename S, typename T = compute_t<S>>
DDPM_FAST_INLINE void project_and_attend_head_backward(const T* w, const T* w_v_t, const T* sample, const S* g,
                                                       int64_t g_c, int64_t g_j, HeadSlices<S> grad, Scratch<T>& s,
                                                       int64_t heads, int64_t h, int64_t d, int64_t C, int64_t n,
                                                       T scale) {
  T* qk = s.qk.data();
  project_head<I, T>(w, w_v_t, sample, qk, s, heads, h, d, C, n);
  small_gemm<vector_bytes<I>>(w + (2 * heads + h) * d * C, C, 1, sample, s.ld, s.v.data(), s.ld, d, C, n);
  load_grad(g, g_c, g_j, s, d, n);
  attend_backward<I, T>(qk, qk + d * s.ld, s.ld, grads_for(grad, s, d, n), s, d, n, scale);
  round_grads(s, grad, d, n);
}

// What the forward and backward share: x in a layout the kernel reads (channels_last or
// contiguous NCHW), w_qkv as (3 * heads * d, C), and the sizes.
struct ProjectedProblem {
  Tensor x, w;
  int64_t B, C, H, W, n, heads, d;
  int64_t c_stride, j_stride;  // element (c, j) of sample b at b * C * n + c * c_stride + j * j_stride
  ProjectedProblem(const Tensor& x_in, const Tensor& w_qkv, int64_t heads) : heads(heads) {
    check_projected_linear_attention_args(x_in, w_qkv, heads);
    const bool channels_last = is_channels_last_only(x_in);
    x = channels_last ? x_in : as_contiguous(x_in);
    B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), n = H * W;
    d = w_qkv.size(0) / (3 * heads);
    w = as_contiguous(torch::stable::reshape(w_qkv, {w_qkv.size(0), C}));
    c_stride = channels_last ? 1 : n;
    j_stride = channels_last ? C : 1;
  }

  // Runs task.template operator()<I>(i, h, sample, scratch) at the active level I for every
  // task i = b * heads + h, in parallel, with sample b of x (storage type S) gathered into
  // padded compute rows (once for consecutive tasks of one sample).
  template <typename S, typename Task>
  void for_each_head(bool backward, const Task& task) const {
    using T = compute_t<S>;
    const S* x_base = data<S>(x);
    torch::stable::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
      Scratch<T> scratch(d, n, backward, /*with_qk=*/true, /*staging=*/widens<S>);
      std::vector<T> sample(C * scratch.ld, T(0));
      dispatch_isa([&]<CpuIsa I>() DDPM_FAST_ISA_LAMBDA {
        int64_t gathered = -1;
        for (int64_t i = begin; i < end; ++i) {
          const int64_t b = i / heads;
          if (b != gathered) {
            gather_sample(x_base + b * C * n, c_stride, j_stride, sample.data(), C, n, scratch.ld);
            gathered = b;
          }
          task.template operator()<I>(i, i % heads, sample.data(), scratch);
        }
      });
    });
  }

  // w as compute values, (3 * heads * d, C): the tensor's own data when S is the compute type,
  // else widened into `buffer`.
  template <typename S>
  const compute_t<S>* compute_weights(std::vector<compute_t<S>>& buffer) const {
    const S* w_base = data<S>(w);
    if constexpr (widens<S>) {
      buffer.resize(w.numel());
      for (int64_t i = 0; i < w.numel(); ++i) buffer[i] = load(w_base[i]);
      return buffer.data();
    } else {
      return w_base;
    }
  }

  // The v rows of w (compute values), per head transposed to (C, ldd) padded rows.
  template <typename T>
  std::vector<T> v_weights_transposed(const T* w_base) const {
    const int64_t ldd = padded_length<T>(d);
    std::vector<T> w_v_t(heads * C * ldd, T(0));
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t e = 0; e < d; ++e)
        for (int64_t c = 0; c < C; ++c) w_v_t[(h * C + c) * ldd + e] = w_base[((2 * heads + h) * d + e) * C + c];
    return w_v_t;
  }
};

Tensor projected_linear_attention_cpu(const Tensor& x_in, const Tensor& w_qkv, int64_t heads,
                                      double scale) {
  const ProjectedProblem p(x_in, w_qkv, heads);
  Tensor out = empty({p.B, heads * p.d, p.H, p.W}, p.x, p.x.scalar_type());
  if (out.numel() == 0) return torch::stable::zero_(out);
  dispatch_floating_and_bf16(p.x.scalar_type(), "projected_linear_attention", [&]<typename S>() {
    using T = compute_t<S>;
    std::vector<T> widened;
    const T* w = p.compute_weights<S>(widened);
    const std::vector<T> w_v_t = p.v_weights_transposed(w);
    S* out_base = mutable_data<S>(out);
    p.for_each_head<S>(false, [&]<CpuIsa I>(int64_t i, int64_t h, const T* sample, Scratch<T>& s)
                                   DDPM_FAST_ISA_LAMBDA {
      project_and_attend_head<I, S>(w, w_v_t.data(), sample, out_base + i * p.d * p.n, s, heads, h, p.d, p.C, p.n,
                                    T(scale));
    });
  });
  return out;
}

// Gradient of projected_linear_attention with respect to the qkv it never stored:
// (B, 3 * heads * d, H, W), NCHW. grad_out may be NCHW or channels_last (as the to_out
// GEMM's backward leaves it).
Tensor projected_linear_attention_backward_cpu(const Tensor& grad_out, const Tensor& x_in,
                                               const Tensor& w_qkv, int64_t heads, double scale) {
  const ProjectedProblem p(x_in, w_qkv, heads);
  const int64_t hidden = heads * p.d;
  DDPM_CHECK(grad_out.dim() == 4 && grad_out.size(0) == p.B && grad_out.size(1) == hidden &&
                  grad_out.size(2) == p.H && grad_out.size(3) == p.W,
              "projected_linear_attention_backward: grad_out must have shape (", p.B, ", ", hidden, ", ", p.H, ", ",
              p.W, "), got ", shape_string(grad_out.sizes()));
  DDPM_CHECK(grad_out.scalar_type() == p.x.scalar_type(), "projected_linear_attention_backward: grad_out must have "
              "x's dtype ", p.x.scalar_type(), ", got ", grad_out.scalar_type());
  const bool g_channels_last = is_channels_last_only(grad_out);
  const Tensor g = g_channels_last ? grad_out : as_contiguous(grad_out);
  Tensor grad_qkv = empty({p.B, 3 * hidden, p.H, p.W}, p.x, p.x.scalar_type());
  if (grad_qkv.numel() == 0) return grad_qkv;
  dispatch_floating_and_bf16(p.x.scalar_type(), "projected_linear_attention_backward", [&]<typename S>() {
    using T = compute_t<S>;
    std::vector<T> widened;
    const T* w = p.compute_weights<S>(widened);
    const std::vector<T> w_v_t = p.v_weights_transposed(w);
    const S* g_base = data<S>(g);
    S* grad_base = mutable_data<S>(grad_qkv);
    const int64_t g_c = g_channels_last ? 1 : p.n, g_j = g_channels_last ? hidden : 1;
    p.for_each_head<S>(true, [&]<CpuIsa I>(int64_t i, int64_t h, const T* sample, Scratch<T>& s)
                                  DDPM_FAST_ISA_LAMBDA {
      const int64_t b = i / heads;
      const S* gh = g_base + b * hidden * p.n + h * p.d * g_c;
      project_and_attend_head_backward<I, S>(w, w_v_t.data(), sample, gh, g_c, g_j,
                                             HeadSlices<S>(grad_base, i, heads, p.d, p.n), s, heads, h, p.d, p.C,
                                             p.n, T(scale));
    });
  });
  return grad_qkv;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ddpm_fast, CPU, m) {
  m.impl("linear_attention", TORCH_BOX(&linear_attention_cpu));
  m.impl("linear_attention_backward", TORCH_BOX(&linear_attention_backward_cpu));
  m.impl("projected_linear_attention", TORCH_BOX(&projected_linear_attention_cpu));
  m.impl("projected_linear_attention_backward", TORCH_BOX(&projected_linear_attention_backward_cpu));
}

}  // namespace ddpm_fast
