// CUDA kernels of group_norm_act, forward and backward, NCHW and channels_last.
//
// Forward = two kernels. (1) Split statistics: grid_row() = (n, g), blockIdx.x = one of
// `splits` slices of the group's M = C/G * H*W elements, so batch-1 sampling still fills the GPU
// (one block per (n, g) would leave most SMs idle at N*G = 1). Each slice writes shifted sums
// (shift = the group's first element, which avoids the cancellation of plain sum-of-squares).
// (2) Apply: same grid; each block folds the partials into mean/rstd and writes
// y = act(a[c] * x + b[c]) over its slice.
// Backward = three kernels: per-(n, c) sums of du and du * xhat (split, atomics), per-(n, g)
// means of the dx formula, then dx elementwise.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Address of element k (0 <= k < M) of group g of sample n, and its channel.
struct GroupIndex {
  int64_t C, HW, Cg;
  bool nhwc;
  __device__ __forceinline__ int64_t offset(int64_t n, int64_t g, int64_t k) const {
    if (nhwc) return (n * HW + k / Cg) * C + g * Cg + k % Cg;
    return (n * C + g * Cg) * HW + k;
  }
  __device__ __forceinline__ int64_t channel(int64_t g, int64_t k) const {
    return g * Cg + (nhwc ? k % Cg : k / HW);
  }
};

template <typename T>
__device__ __forceinline__ acc_t<T> load(const void* p, int64_t i) {
  return to_acc(static_cast<const T*>(p)[i]);
}

template <typename T>
__device__ __forceinline__ acc_t<T> load_or(const void* p, int64_t i, acc_t<T> fallback) {
  return p ? load<T>(p, i) : fallback;
}

template <typename T>
__global__ void partial_stats_kernel(GroupNormActParams p, GroupIndex gi) {
  using A = acc_t<T>;
  DDPM_SHARED(A[32], shared);
  const int64_t ng = grid_row(), n = ng / p.G, g = ng % p.G;
  if (ng >= p.N * p.G) return;
  const int64_t M = gi.Cg * p.HW, per = ceil_div(M, p.splits);
  const int64_t begin = blockIdx.x * per, end = begin + per < M ? begin + per : M;
  const A shift = load<T>(p.x, gi.offset(n, g, 0));
  A s = 0, sq = 0;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
    const A v = load<T>(p.x, gi.offset(n, g, k)) - shift;
    s += v;
    sq += v * v;
  }
  s = block_sum(s, shared);
  sq = block_sum(sq, shared);
  if (threadIdx.x == 0) {
    A* partials = static_cast<A*>(p.partials) + (ng * p.splits + blockIdx.x) * 2;
    partials[0] = s;
    partials[1] = sq;
  }
}

// mean and rstd of group ng = (n, g) from its split partials; every thread gets them.
template <typename A>
__device__ __forceinline__ void group_stats(const GroupNormActParams& p, int64_t ng, A shift, int64_t M,
                                            A* shared, A* mean, A* rstd) {
  const A* partials = static_cast<const A*>(p.partials) + ng * p.splits * 2;
  A s = 0, sq = 0;
  for (int64_t i = threadIdx.x; i < p.splits; i += blockDim.x) {
    s += partials[2 * i];
    sq += partials[2 * i + 1];
  }
  s = block_sum(s, shared);
  sq = block_sum(sq, shared);
  const A shifted_mean = s / A(M);
  const A var = sq / A(M) - shifted_mean * shifted_mean;
  *mean = shift + shifted_mean;
  *rstd = A(1) / sqrt((var > A(0) ? var : A(0)) + A(p.eps));
}

template <typename T, int ACT>
__global__ void apply_kernel(GroupNormActParams p, GroupIndex gi) {
  using A = acc_t<T>;
  DDPM_SHARED(A[32], shared);
  const int64_t ng = grid_row(), n = ng / p.G, g = ng % p.G;
  if (ng >= p.N * p.G) return;
  const int64_t M = gi.Cg * p.HW, per = ceil_div(M, p.splits);
  A mean, rstd;
  group_stats<A>(p, ng, load<T>(p.x, gi.offset(n, g, 0)), M, shared, &mean, &rstd);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    static_cast<A*>(p.mean)[ng] = mean;
    static_cast<A*>(p.rstd)[ng] = rstd;
  }
  const int64_t begin = blockIdx.x * per, end = begin + per < M ? begin + per : M;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) {
    const int64_t c = gi.channel(g, k), off = gi.offset(n, g, k);
    const A w = load_or<T>(p.weight, c, A(1)), b = load_or<T>(p.bias, c, A(0));
    const A s1 = A(1) + load_or<T>(p.scale, n * p.C + c, A(0));
    const A sh = load_or<T>(p.shift, n * p.C + c, A(0));
    const A xhat = (load<T>(p.x, off) - mean) * rstd;
    static_cast<T*>(p.y)[off] = from_acc<T>(act_forward<ACT>((xhat * w + b) * s1 + sh));
  }
}

// ---- backward

// du and xhat of element `off` of channel c in sample n.
template <typename T, int ACT>
__device__ __forceinline__ void grads(const GroupNormActParams& p, int64_t n, int64_t c,
                                      int64_t off, acc_t<T> mean, acc_t<T> rstd, acc_t<T>* du,
                                      acc_t<T>* xhat) {
  using A = acc_t<T>;
  *xhat = (load<T>(p.x, off) - mean) * rstd;
  const A dy = load<T>(p.grad_y, off);
  if constexpr (ACT == 0) {
    *du = dy;
  } else {
    const A s1 = A(1) + load_or<T>(p.scale, n * p.C + c, A(0));
    const A u = (*xhat * load_or<T>(p.weight, c, A(1)) + load_or<T>(p.bias, c, A(0))) * s1 +
                load_or<T>(p.shift, n * p.C + c, A(0));
    *du = dy * act_derivative<ACT>(u);
  }
}

// Per-(n, c) sums of du and du * xhat. grid_row() = n * C + c for NCHW (rows of HW), or n for
// channels_last (threads along channels, blockIdx.x slices of positions).
template <typename T, int ACT>
__global__ void grad_sums_kernel(GroupNormActParams p) {
  using A = acc_t<T>;
  DDPM_SHARED(A[32], shared);
  A* sum_du = static_cast<A*>(p.sum_du);
  A* sum_du_xhat = static_cast<A*>(p.sum_du_xhat);
  const int64_t Cg = p.C / p.G;
  const int64_t per = ceil_div(p.HW, p.splits);
  const int64_t begin = blockIdx.x * per, end = begin + per < p.HW ? begin + per : p.HW;
  const int64_t row = grid_row();
  if (row >= (p.nhwc ? p.N : p.N * p.C)) return;
  if (!p.nhwc) {
    const int64_t nc = row, n = nc / p.C, c = nc % p.C, ng = n * p.G + c / Cg;
    const A mean = static_cast<const A*>(p.mean)[ng], rstd = static_cast<const A*>(p.rstd)[ng];
    A s1 = 0, s2 = 0;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      A du, xhat;
      grads<T, ACT>(p, n, c, nc * p.HW + j, mean, rstd, &du, &xhat);
      s1 += du;
      s2 += du * xhat;
    }
    s1 = block_sum(s1, shared);
    s2 = block_sum(s2, shared);
    if (threadIdx.x == 0) {
      atomicAdd(sum_du + nc, s1);
      atomicAdd(sum_du_xhat + nc, s2);
    }
    return;
  }
  const int64_t n = row;
  for (int64_t c = threadIdx.x; c < p.C; c += blockDim.x) {
    const int64_t ng = n * p.G + c / Cg;
    const A mean = static_cast<const A*>(p.mean)[ng], rstd = static_cast<const A*>(p.rstd)[ng];
    A s1 = 0, s2 = 0;
    for (int64_t j = begin; j < end; ++j) {
      A du, xhat;
      grads<T, ACT>(p, n, c, (n * p.HW + j) * p.C + c, mean, rstd, &du, &xhat);
      s1 += du;
      s2 += du * xhat;
    }
    atomicAdd(sum_du + n * p.C + c, s1);
    atomicAdd(sum_du_xhat + n * p.C + c, s2);
  }
}

// m1 = sum_{c in g} k * sum_du / M and m2 = sum_{c in g} k * sum_du_xhat / M, k = w * (1 + scale).
template <typename T>
__global__ void group_terms_kernel(GroupNormActParams p) {
  using A = acc_t<T>;
  const int64_t ng = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ng >= p.N * p.G) return;
  const int64_t n = ng / p.G, g = ng % p.G, Cg = p.C / p.G;
  A m1 = 0, m2 = 0;
  for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
    const A k = load_or<T>(p.weight, c, A(1)) * (A(1) + load_or<T>(p.scale, n * p.C + c, A(0)));
    m1 += k * static_cast<const A*>(p.sum_du)[n * p.C + c];
    m2 += k * static_cast<const A*>(p.sum_du_xhat)[n * p.C + c];
  }
  const A M = A(Cg * p.HW);
  static_cast<A*>(p.group_m)[2 * ng] = m1 / M;
  static_cast<A*>(p.group_m)[2 * ng + 1] = m2 / M;
}

template <typename T, int ACT>
__global__ void grad_input_kernel(GroupNormActParams p) {
  using A = acc_t<T>;
  const int64_t total = p.N * p.C * p.HW, Cg = p.C / p.G;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = p.nhwc ? i % p.C : (i / p.HW) % p.C;
    const int64_t n = i / (p.C * p.HW), ng = n * p.G + c / Cg;
    const A mean = static_cast<const A*>(p.mean)[ng], rstd = static_cast<const A*>(p.rstd)[ng];
    A du, xhat;
    grads<T, ACT>(p, n, c, i, mean, rstd, &du, &xhat);
    const A k = load_or<T>(p.weight, c, A(1)) * (A(1) + load_or<T>(p.scale, n * p.C + c, A(0)));
    const A* m = static_cast<const A*>(p.group_m) + 2 * ng;
    static_cast<T*>(p.grad_x)[i] = from_acc<T>(rstd * (k * du - m[0] - xhat * m[1]));
  }
}

}  // namespace

int64_t group_norm_splits(int64_t rows, int64_t elements) {
  if (rows <= 0 || elements <= 0) return 1;  // an empty input launches nothing
  const int64_t want = ceil_div(4 * sm_count(), rows);
  const int64_t most = ceil_div(elements, kThreads);
  const int64_t splits = want < most ? want : most;
  return splits < 1 ? 1 : (splits > 1024 ? 1024 : splits);
}

const char* launch_group_norm_act_forward(const GroupNormActParams& p, void* stream_ptr) {
  if (p.N == 0 || p.C == 0 || p.HW == 0) return nullptr;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const GroupIndex gi{p.C, p.HW, p.C / p.G, p.nhwc};
  const dim3 grid = row_grid(static_cast<unsigned>(p.splits), p.N * p.G);
  dispatch_dtype(p.dtype, [&]<typename T>() {
    launch_kernel<partial_stats_kernel<T>>(grid, dim3(kThreads), stream, p, gi);
    dispatch_act(p.act, [&]<int ACT>() { launch_kernel<apply_kernel<T, ACT>>(grid, dim3(kThreads), stream, p, gi); });
  });
  return last_launch_error();
}

const char* launch_group_norm_act_backward(const GroupNormActParams& p, void* stream_ptr) {
  if (p.N == 0 || p.C == 0 || p.HW == 0) return nullptr;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const bool wide = p.dtype == DType::kFloat64;
  const size_t sums_bytes = size_t(p.N * p.C) * (wide ? sizeof(double) : sizeof(float));
  cudaMemsetAsync(p.sum_du, 0, sums_bytes, stream);
  cudaMemsetAsync(p.sum_du_xhat, 0, sums_bytes, stream);
  GroupNormActParams q = p;  // the sums split HW per (n, c) row (NCHW) or per sample (NHWC)
  const int64_t rows = p.nhwc ? p.N : p.N * p.C;
  q.splits = group_norm_splits(rows, p.HW);
  const dim3 sums_grid = row_grid(static_cast<unsigned>(q.splits), rows);
  const int64_t total = p.N * p.C * p.HW;
  const unsigned blocks = static_cast<unsigned>(ceil_div(total, kThreads) < 65535 * 8 ? ceil_div(total, kThreads) : 65535 * 8);
  dispatch_dtype(p.dtype, [&]<typename T>() {
    dispatch_act(p.act, [&]<int ACT>() { launch_kernel<grad_sums_kernel<T, ACT>>(sums_grid, dim3(kThreads), stream, q); });
    launch_kernel<group_terms_kernel<T>>(dim3(static_cast<unsigned>(ceil_div(p.N * p.G, kThreads))), dim3(kThreads),
                                         stream, p);
    dispatch_act(p.act, [&]<int ACT>() { launch_kernel<grad_input_kernel<T, ACT>>(dim3(blocks), dim3(kThreads), stream, p); });
  });
  return last_launch_error();
}

}  // namespace cuda
}  // namespace ddpm_fast
