// CUDA kernel of q_sample, DDPM's forward noising: a memory-bound per-sample affine update.
// Parallelisation: a 2-D grid, grid_row() = sample (so the timestep and its coefficients are
// read once per block), blockIdx.x = tiles of kThreads * kVec elements of that sample, grid-
// strided; element k * kThreads + threadIdx.x of a tile keeps every warp access coalesced.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;

template <typename T>
__global__ void q_sample_kernel(QSampleParams p) {
  using A = acc_t<T>;
  const int64_t b = grid_row();
  if (b >= p.batch) return;
  const int64_t s = p.t[b];
  const bool valid = s >= 0 && s < p.timesteps;
  // An out-of-range timestep turns the sample into NaN: checking it would need a host sync.
  const A nan = A(__int_as_float(0x7fc00000));
  const A ca = valid ? static_cast<const A*>(p.sqrt_alphas_cumprod)[s] : nan;
  const A cb = valid ? static_cast<const A*>(p.sqrt_one_minus_alphas_cumprod)[s] : nan;
  const T* x = static_cast<const T*>(p.x_start) + b * p.per_sample;
  const T* noise = static_cast<const T*>(p.noise) + b * p.per_sample;
  T* out = static_cast<T*>(p.out) + b * p.per_sample;
  const int64_t tile = int64_t(kThreads) * kVec;
  for (int64_t base = int64_t(blockIdx.x) * tile; base < p.per_sample; base += int64_t(gridDim.x) * tile) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t i = base + k * kThreads + threadIdx.x;
      if (i < p.per_sample) out[i] = from_acc<T>(ca * to_acc(x[i]) + cb * to_acc(noise[i]));
    }
  }
}

}  // namespace

const char* launch_q_sample(const QSampleParams& p, void* stream) {
  if (p.batch == 0 || p.per_sample == 0) return nullptr;
  const int64_t chunks = ceil_div(p.per_sample, int64_t(kThreads) * kVec);
  const dim3 grid = row_grid(static_cast<unsigned>(chunks < 65535 ? chunks : 65535), p.batch);
  dispatch_dtype(p.dtype, [&]<typename T>() {
    launch_kernel<q_sample_kernel<T>>(grid, dim3(kThreads), static_cast<cudaStream_t>(stream), p);
  });
  return last_launch_error();
}

}  // namespace cuda
}  // namespace ddpm_fast
