// CUDA kernels of q_sample and p_sample_update: memory-bound per-sample affine updates.
// Parallelisation: a 2-D grid, grid_row() = sample (so the timestep and its coefficients are
// read once per block), blockIdx.x = tiles of kThreads * kVec elements of that sample, grid-
// strided; element k * kThreads + threadIdx.x of a tile keeps every warp access coalesced.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;

template <typename T, bool P_SAMPLE>
__global__ void per_sample_update_kernel(PerSampleUpdateParams p) {
  using A = acc_t<T>;
  const int64_t b = grid_row();
  if (b >= p.batch) return;
  const int64_t s = p.t[b];
  const bool valid = s >= 0 && s < p.timesteps;
  const A nan = A(__int_as_float(0x7fc00000));
  const A ca = valid ? static_cast<const A*>(p.A)[s] : nan;
  const A cb = valid ? static_cast<const A*>(p.B)[s] : nan;
  const A cc = P_SAMPLE && valid ? static_cast<const A*>(p.C)[s] : A(0);
  const T* x = static_cast<const T*>(p.x) + b * p.per_sample;
  const T* y = static_cast<const T*>(p.y) + b * p.per_sample;
  const T* z = P_SAMPLE ? static_cast<const T*>(p.z) + b * p.per_sample : nullptr;
  T* out = static_cast<T*>(p.out) + b * p.per_sample;
  const int64_t tile = int64_t(kThreads) * kVec;
  for (int64_t base = int64_t(blockIdx.x) * tile; base < p.per_sample; base += int64_t(gridDim.x) * tile) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t i = base + k * kThreads + threadIdx.x;
      if (i < p.per_sample) {
        const A xv = to_acc(x[i]), yv = to_acc(y[i]);
        A v;
        if constexpr (P_SAMPLE) {
          v = ca * (xv - cb * yv) + cc * to_acc(z[i]);
        } else {
          v = ca * xv + cb * yv;
        }
        out[i] = from_acc<T>(v);
      }
    }
  }
}

template <bool P_SAMPLE>
const char* launch(const PerSampleUpdateParams& p, void* stream) {
  if (p.batch == 0 || p.per_sample == 0) return nullptr;
  const int64_t chunks = ceil_div(p.per_sample, int64_t(kThreads) * kVec);
  const dim3 grid = row_grid(static_cast<unsigned>(chunks < 65535 ? chunks : 65535), p.batch);
  dispatch_dtype(p.dtype, [&]<typename T>() {
    launch_kernel<per_sample_update_kernel<T, P_SAMPLE>>(grid, dim3(kThreads), static_cast<cudaStream_t>(stream), p);
  });
  return last_launch_error();
}

}  // namespace

const char* launch_q_sample(const PerSampleUpdateParams& p, void* stream) {
  return launch<false>(p, stream);
}

const char* launch_p_sample_update(const PerSampleUpdateParams& p, void* stream) {
  return launch<true>(p, stream);
}

}  // namespace cuda
}  // namespace ddpm_fast
