// CUDA kernels of linear_attention (the seed's LinearAttention core), forward and backward.
//
// Per (b, h): q, k, v are (d, n) with n = H*W positions. Sq = softmax_d(q) per position,
// K = softmax_n(k) per channel, C = K v^T (d x d), out = (scale * C)^T Sq.
// Kernels and their parallelisation:
//   k_stats:  one block per row of k (b, h, d): max and sum of exp over the n positions.
//   context:  grid_row() = (b, h), blockIdx.x = a slice of positions; tiles of K and v (and,
//             backward, of Sq and grad_out) in shared memory; each thread owns a few of the
//             d x d entries and atomically adds its slice's sum (C, and dC = Sq grad_out^T).
//   output:   one thread per position: softmax of its q column in registers, then out = C'^T p.
//   inputs:   backward, one thread per position: dq, dk, dv from C, dC and the row terms
//             rowdot[d] = sum_e dC'[d, e] * C[d, e] (= sum_n K dK, no extra pass over n).
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Positions per shared-memory tile of the context kernel: four (D x tile) tiles stay within the
// 48 KiB of static shared memory for D = 64 in fp32 and, with half the tile, in fp64.
template <typename A>
constexpr int kTile = sizeof(A) == 8 ? 16 : 32;
constexpr int kPositions = 128;     // threads (positions) per block in the per-position kernels

template <typename T>
__device__ __forceinline__ const T* slice(const LinearAttentionParams& p, int part, int64_t bh) {
  const int64_t b = bh / p.heads, h = bh % p.heads;
  return static_cast<const T*>(p.qkv) + ((b * 3 + part) * p.heads + h) * p.d * p.n;
}

template <typename T>
__global__ void k_stats_kernel(LinearAttentionParams p) {
  using A = acc_t<T>;
  DDPM_SHARED(A[32], shared);
  const int64_t row = blockIdx.x, bh = row / p.d, i = row % p.d;
  const T* k = slice<T>(p, 1, bh) + i * p.n;
  A m = -INFINITY;
  for (int64_t j = threadIdx.x; j < p.n; j += blockDim.x) m = max(m, to_acc(k[j]));
  m = block_max(m, shared);
  A s = 0;
  for (int64_t j = threadIdx.x; j < p.n; j += blockDim.x) s += exp(to_acc(k[j]) - m);
  s = block_sum(s, shared);
  if (threadIdx.x == 0) {
    static_cast<A*>(p.k_stats)[2 * row] = m;
    static_cast<A*>(p.k_stats)[2 * row + 1] = s;
  }
}

// Column softmax over d of q at position j, into out[0, D) (registers): D is the compile-time
// bound of d, and the entries from d on are 0, since callers sum over all D of them.
template <int D, typename T>
__device__ __forceinline__ void q_softmax(const T* q, int64_t n, int64_t j, int d, acc_t<T>* out) {
  using A = acc_t<T>;
  A m = -INFINITY;
#pragma unroll
  for (int i = 0; i < D; ++i)
    if (i < d) m = max(m, to_acc(q[i * n + j]));
  A s = 0;
#pragma unroll
  for (int i = 0; i < D; ++i)
    if (i < d) s += (out[i] = exp(to_acc(q[i * n + j]) - m));
#pragma unroll
  for (int i = 0; i < D; ++i) out[i] = i < d ? out[i] / s : A(0);
}

// C = K v^T and, when BACKWARD, dC = Sq grad_out^T, both summed over this block's positions and
// atomically added to p.ctx / p.dctx (zeroed by the launcher).
template <int D, typename T, bool BACKWARD>
__global__ void context_kernel(LinearAttentionParams p, int64_t per_block) {
  using A = acc_t<T>;
  constexpr int kEntries = (D * D + kThreads - 1) / kThreads;
  constexpr int kT = kTile<A>;
  DDPM_SHARED(A[D][kT], k_tile);
  DDPM_SHARED(A[D][kT], v_tile);
  DDPM_SHARED(A[BACKWARD ? D : 1][kT], q_tile);
  DDPM_SHARED(A[BACKWARD ? D : 1][kT], g_tile);
  const int64_t bh = grid_row();
  if (bh >= p.B * p.heads) return;
  const int d = static_cast<int>(p.d);
  const T *q = slice<T>(p, 0, bh), *k = slice<T>(p, 1, bh), *v = slice<T>(p, 2, bh);
  const T* g = BACKWARD ? static_cast<const T*>(p.grad_out) + bh * p.d * p.n : nullptr;
  const A* stats = static_cast<const A*>(p.k_stats) + bh * p.d * 2;
  A acc[kEntries] = {}, dacc[kEntries] = {};
  const int64_t begin = blockIdx.x * per_block;
  const int64_t end = begin + per_block < p.n ? begin + per_block : p.n;
  for (int64_t base = begin; base < end; base += kT) {
    for (int idx = threadIdx.x; idx < D * kT; idx += blockDim.x) {
      const int i = idx / kT, jj = idx % kT;
      const int64_t j = base + jj;
      const bool in = i < d && j < end;
      k_tile[i][jj] = in ? exp(to_acc(k[i * p.n + j]) - stats[2 * i]) / stats[2 * i + 1] : A(0);
      v_tile[i][jj] = in ? to_acc(v[i * p.n + j]) : A(0);
      if constexpr (BACKWARD) g_tile[i][jj] = in ? to_acc(g[i * p.n + j]) : A(0);
    }
    if constexpr (BACKWARD) {
      // Sq for the tile: one thread per position computes its column softmax.
      for (int jj = threadIdx.x; jj < kT; jj += blockDim.x) {
        const int64_t j = base + jj;
        A col[D];
        if (j < end) q_softmax<D, T>(q, p.n, j, d, col);
#pragma unroll
        for (int i = 0; i < D; ++i) q_tile[i][jj] = (j < end && i < d) ? col[i] : A(0);
      }
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kEntries; ++e) {
      const int idx = threadIdx.x + e * kThreads;
      if (idx < D * D) {
        const int i = idx / D, c = idx % D;
        A s = 0, ds = 0;
#pragma unroll 8
        for (int jj = 0; jj < kT; ++jj) {
          s += k_tile[i][jj] * v_tile[c][jj];
          if constexpr (BACKWARD) ds += q_tile[i][jj] * g_tile[c][jj];
        }
        acc[e] += s;
        dacc[e] += ds;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int e = 0; e < kEntries; ++e) {
    const int idx = threadIdx.x + e * kThreads;
    const int i = idx / D, c = idx % D;
    if (idx < D * D && i < d && c < d) {
      atomicAdd(static_cast<A*>(p.ctx) + (bh * p.d + i) * p.d + c, acc[e]);
      if constexpr (BACKWARD) atomicAdd(static_cast<A*>(p.dctx) + (bh * p.d + i) * p.d + c, dacc[e]);
    }
  }
}

// out[e, j] = sum_i scale * C[i, e] * Sq[i, j], one thread per position j.
template <int D, typename T>
__global__ void output_kernel(LinearAttentionParams p) {
  using A = acc_t<T>;
  DDPM_SHARED(A[D][D], ctx);
  const int64_t bh = grid_row();
  if (bh >= p.B * p.heads) return;
  const int d = static_cast<int>(p.d);
  for (int idx = threadIdx.x; idx < D * D; idx += blockDim.x) {
    const int i = idx / D, c = idx % D;
    ctx[i][c] = (i < d && c < d) ? A(p.scale) * static_cast<const A*>(p.ctx)[(bh * p.d + i) * p.d + c] : A(0);
  }
  __syncthreads();
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= p.n) return;
  A sq[D];
  q_softmax<D, T>(slice<T>(p, 0, bh), p.n, j, d, sq);
  T* out = static_cast<T*>(p.out) + bh * p.d * p.n;
  for (int c = 0; c < d; ++c) {
    A s = 0;
#pragma unroll
    for (int i = 0; i < D; ++i)
      if (i < d) s += ctx[i][c] * sq[i];
    out[c * p.n + j] = from_acc<T>(s);
  }
}

// Backward, one thread per position j: dq, dk and dv.
template <int D, typename T>
__global__ void input_grads_kernel(LinearAttentionParams p) {
  using A = acc_t<T>;
  DDPM_SHARED(A[D][D], ctx);
  DDPM_SHARED(A[D][D], dctx);
  DDPM_SHARED(A[D], rowdot);
  DDPM_SHARED(A[D], kmax);
  DDPM_SHARED(A[D], ksum);
  const int64_t bh = grid_row();
  if (bh >= p.B * p.heads) return;
  const int d = static_cast<int>(p.d);
  const A scale = A(p.scale);
  for (int idx = threadIdx.x; idx < D * D; idx += blockDim.x) {
    const int i = idx / D, c = idx % D;
    const bool in = i < d && c < d;
    const int64_t at = (bh * p.d + i) * p.d + c;
    ctx[i][c] = in ? static_cast<const A*>(p.ctx)[at] : A(0);                 // C (unscaled)
    dctx[i][c] = in ? scale * static_cast<const A*>(p.dctx)[at] : A(0);       // dL/d(K v^T)
  }
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    kmax[i] = i < d ? static_cast<const A*>(p.k_stats)[(bh * p.d + i) * 2] : A(0);
    ksum[i] = i < d ? static_cast<const A*>(p.k_stats)[(bh * p.d + i) * 2 + 1] : A(1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    A s = 0;
    for (int c = 0; c < D; ++c) s += dctx[i][c] * ctx[i][c];
    rowdot[i] = s;
  }
  __syncthreads();
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= p.n) return;
  const T *q = slice<T>(p, 0, bh), *k = slice<T>(p, 1, bh), *v = slice<T>(p, 2, bh);
  const T* g = static_cast<const T*>(p.grad_out) + bh * p.d * p.n;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  T* gq = static_cast<T*>(p.grad_qkv) + ((b * 3 + 0) * p.heads + h) * p.d * p.n;
  T* gk = static_cast<T*>(p.grad_qkv) + ((b * 3 + 1) * p.heads + h) * p.d * p.n;
  T* gv = static_cast<T*>(p.grad_qkv) + ((b * 3 + 2) * p.heads + h) * p.d * p.n;

  A sq[D], go[D];
  q_softmax<D, T>(q, p.n, j, d, sq);
#pragma unroll
  for (int c = 0; c < D; ++c) go[c] = c < d ? to_acc(g[c * p.n + j]) : A(0);
  // dSq[i] = sum_c scale * C[i, c] * go[c]; dq = Sq * (dSq - sum_i Sq * dSq).
  A dsq[D], dot = 0;
#pragma unroll
  for (int i = 0; i < D; ++i) {
    A s = 0;
#pragma unroll
    for (int c = 0; c < D; ++c) s += ctx[i][c] * go[c];
    dsq[i] = scale * s;
    dot += sq[i] * dsq[i];
  }
  for (int i = 0; i < d; ++i) gq[i * p.n + j] = from_acc<T>(sq[i] * (dsq[i] - dot));
  // K[i] and v[c] at j; dK[i] = sum_c dC'[i, c] v[c]; dk = K (dK - rowdot); dv[c] = sum_i dC'[i, c] K[i].
  A kk[D], vv[D];
#pragma unroll
  for (int i = 0; i < D; ++i) {
    kk[i] = i < d ? exp(to_acc(k[i * p.n + j]) - kmax[i]) / ksum[i] : A(0);
    vv[i] = i < d ? to_acc(v[i * p.n + j]) : A(0);
  }
  for (int i = 0; i < d; ++i) {
    A s = 0;
#pragma unroll
    for (int c = 0; c < D; ++c) s += dctx[i][c] * vv[c];
    gk[i * p.n + j] = from_acc<T>(kk[i] * (s - rowdot[i]));
  }
  for (int c = 0; c < d; ++c) {
    A s = 0;
#pragma unroll
    for (int i = 0; i < D; ++i) s += dctx[i][c] * kk[i];
    gv[c * p.n + j] = from_acc<T>(s);
  }
}

template <int D, typename T>
const char* run(const LinearAttentionParams& p, cudaStream_t stream, bool backward) {
  using A = acc_t<T>;
  const int64_t bh = p.B * p.heads;
  const size_t ctx_bytes = size_t(bh * p.d * p.d) * sizeof(A);
  cudaMemsetAsync(p.ctx, 0, ctx_bytes, stream);
  if (backward) cudaMemsetAsync(p.dctx, 0, ctx_bytes, stream);
  launch_kernel<k_stats_kernel<T>>(dim3(static_cast<unsigned>(bh * p.d)), dim3(kThreads), stream, p);
  // Slices of positions per (b, h): enough blocks to fill the GPU, at least one tile each.
  int64_t slices = ceil_div(4 * sm_count(), bh);
  const int64_t most = ceil_div(p.n, kTile<A>);
  slices = slices < most ? slices : most;
  slices = slices < 1 ? 1 : slices;
  const int64_t per_block = ceil_div(ceil_div(p.n, slices), kTile<A>) * kTile<A>;
  const dim3 context_grid = row_grid(static_cast<unsigned>(ceil_div(p.n, per_block)), bh);
  const dim3 position_grid = row_grid(static_cast<unsigned>(ceil_div(p.n, kPositions)), bh);
  if (!backward) {
    launch_kernel<context_kernel<D, T, false>>(context_grid, dim3(kThreads), stream, p, per_block);
    launch_kernel<output_kernel<D, T>>(position_grid, dim3(kPositions), stream, p);
  } else {
    launch_kernel<context_kernel<D, T, true>>(context_grid, dim3(kThreads), stream, p, per_block);
    launch_kernel<input_grads_kernel<D, T>>(position_grid, dim3(kPositions), stream, p);
  }
  return last_launch_error();
}

const char* launch(const LinearAttentionParams& p, void* stream, bool backward) {
  if (p.B == 0 || p.n == 0 || p.d == 0) return nullptr;  // an empty output: nothing to launch
  if (p.d > max_head_dim(p.dtype)) return "linear_attention: dim_head too large for the CUDA kernels";
  const char* error = nullptr;
  dispatch_dtype(p.dtype, [&]<typename T>() {
    const auto s = static_cast<cudaStream_t>(stream);
    if constexpr (sizeof(acc_t<T>) == 8) {
      error = run<32, T>(p, s, backward);  // fp64 holds d <= 32 in shared memory
    } else {
      error = p.d <= 32 ? run<32, T>(p, s, backward) : run<64, T>(p, s, backward);
    }
  });
  return error;
}

}  // namespace

const char* launch_linear_attention_forward(const LinearAttentionParams& p, void* stream) {
  return launch(p, stream, false);
}

const char* launch_linear_attention_backward(const LinearAttentionParams& p, void* stream) {
  return launch(p, stream, true);
}

}  // namespace cuda
}  // namespace ddpm_fast
