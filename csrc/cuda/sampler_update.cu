// CUDA kernel of sampler_update, the one update step shared by the DDPM, DDIM and DPM-Solver++
// samplers: per sample, two affine combinations of up to four inputs. Memory bound.
// Parallelisation: as q_sample.cu, grid_row() = sample (so its step and six coefficients
// are read once per block), blockIdx.x = tiles of kThreads * kVec elements of that sample, grid-
// strided; element k * kThreads + threadIdx.x of a tile keeps warp accesses coalesced.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;
constexpr int kCoefficients = 6;

template <typename T>
__global__ void sampler_update_kernel(SamplerUpdateParams p) {
  using A = acc_t<T>;
  const int64_t b = grid_row();
  if (b >= p.batch) return;
  const int64_t s = p.step[b];
  const bool valid = s >= 0 && s < p.steps;
  const A* row = static_cast<const A*>(p.coefs) + (valid ? s : 0) * kCoefficients;
  // An out-of-range step turns the sample's outputs into NaN: checking it would need a host sync.
  const A nan = A(__int_as_float(0x7fc00000));
  A c[kCoefficients];
#pragma unroll
  for (int j = 0; j < kCoefficients; ++j) c[j] = valid ? row[j] : nan;
  const int64_t offset = b * p.per_sample;
  const T* x = static_cast<const T*>(p.x) + offset;
  const T* eps = static_cast<const T*>(p.eps) + offset;
  const T* prev = p.prev_x0 ? static_cast<const T*>(p.prev_x0) + offset : nullptr;
  const T* noise = p.noise ? static_cast<const T*>(p.noise) + offset : nullptr;
  T* out = static_cast<T*>(p.out) + offset;
  T* x0 = static_cast<T*>(p.x0) + offset;
  const int64_t tile = int64_t(kThreads) * kVec;
  for (int64_t base = int64_t(blockIdx.x) * tile; base < p.per_sample; base += int64_t(gridDim.x) * tile) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t i = base + k * kThreads + threadIdx.x;
      if (i < p.per_sample) {
        const A xv = to_acc(x[i]), ev = to_acc(eps[i]);
        A v = c[0] * xv + c[1] * ev;
        if (prev) v += c[2] * to_acc(prev[i]);
        if (noise) v += c[3] * to_acc(noise[i]);
        out[i] = from_acc<T>(v);
        x0[i] = from_acc<T>(c[4] * xv + c[5] * ev);
      }
    }
  }
}

}  // namespace

const char* launch_sampler_update(const SamplerUpdateParams& p, void* stream) {
  if (p.batch == 0 || p.per_sample == 0) return nullptr;
  const int64_t chunks = ceil_div(p.per_sample, int64_t(kThreads) * kVec);
  const dim3 grid = row_grid(static_cast<unsigned>(chunks < 65535 ? chunks : 65535), p.batch);
  dispatch_dtype(p.dtype, [&]<typename T>() {
    launch_kernel<sampler_update_kernel<T>>(grid, dim3(kThreads), static_cast<cudaStream_t>(stream), p);
  });
  return last_launch_error();
}

}  // namespace cuda
}  // namespace ddpm_fast
