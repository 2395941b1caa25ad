// Kernels with one classic bug each, and correct twins where a test needs a control. They are
// plain CUDA; test_emulator.py launches them through the emulation (via ctypes) and checks that
// every bug is reported. Each launcher returns the launch's error message, or nullptr.
#include "common.cuh"

namespace {

using ddpm_fast::cuda::last_launch_error;
using ddpm_fast::cuda::launch_kernel;

constexpr int kBlock = 256;

// Block sums; without the barrier, a thread can read partial[] before the others wrote it.
template <bool BARRIER>
__global__ void block_sum_kernel(const float* in, float* out) {
  DDPM_SHARED(float[kBlock], partial);
  partial[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  if constexpr (BARRIER) __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (unsigned i = 0; i < blockDim.x; ++i) sum += partial[i];
    out[blockIdx.x] = sum;
  }
}

// `i <= n` where `i < n` belongs: writes out[n].
__global__ void fill_one_past_the_end_kernel(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;
}

// A full-mask shuffle; in a block of 48 threads the second warp has only 16 lanes.
__global__ void shuffle_kernel(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
}

// A full-mask shuffle after half of each warp has returned.
__global__ void shuffle_after_exit_kernel(float* out) {
  if ((threadIdx.x & 31) >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Every thread reads the tile, but only the first 32 wrote it.
__global__ void read_half_written_tile_kernel(float* out) {
  DDPM_SHARED(float[64], tile);
  if (threadIdx.x < 32) tile[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x];
}

// Lane 0 of each warp waits at the barrier while the rest of its warp waits for it in a shuffle.
__global__ void barrier_in_divergent_warp_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if ((threadIdx.x & 31) == 0) __syncthreads();
  v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void fill_kernel(float* out, float value) { out[threadIdx.x] = value; }

// 12289 floats: one more than CUDA's 48 KiB of static shared memory holds.
__global__ void too_much_shared_kernel(float* out) {
  DDPM_SHARED(float[12 * 1024 + 1], big);
  big[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = big[threadIdx.x];
}

// A counter every thread of every block increments kIncrements times; a plain (volatile) `+=`
// where an atomicAdd belongs loses updates when blocks run at the same time.
constexpr int kIncrements = 64;

template <bool ATOMIC>
__global__ void count_kernel(unsigned* counter) {
  volatile unsigned* plain = counter;
  for (int i = 0; i < kIncrements; ++i) {
    if constexpr (ATOMIC) {
      atomicAdd(counter, 1u);
    } else {
      *plain = *plain + 1u;
    }
  }
}

// Block-wide reductions with shuffles, barriers and shared memory: the emulation's own check
// that correct code runs correctly under every schedule.
__global__ void warp_reductions_kernel(const float* in, float* out) {
  DDPM_SHARED(float[32], warp_sums);
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < (blockDim.x + 31) / 32 ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
    const unsigned positive = __ballot_sync(0xffffffffu, lane < (blockDim.x + 31) / 32 && warp_sums[lane] > 0.0f);
    if (lane == 0) {
      out[2 * blockIdx.x] = s;
      out[2 * blockIdx.x + 1] = static_cast<float>(__popc(positive));
    }
  }
}

}  // namespace

extern "C" {

const char* launch_block_sum(const float* in, float* out, int blocks, int barrier, cudaStream_t stream) {
  if (barrier) {
    launch_kernel<block_sum_kernel<true>>(dim3(blocks), dim3(kBlock), stream, in, out);
  } else {
    launch_kernel<block_sum_kernel<false>>(dim3(blocks), dim3(kBlock), stream, in, out);
  }
  return last_launch_error();
}

const char* launch_fill_one_past_the_end(float* out, int n, cudaStream_t stream) {
  launch_kernel<fill_one_past_the_end_kernel>(dim3((n + 63) / 64 + 1), dim3(64), stream, out, n);
  return last_launch_error();
}

const char* launch_shuffle(float* out, int threads, cudaStream_t stream) {
  launch_kernel<shuffle_kernel>(dim3(1), dim3(threads), stream, out);
  return last_launch_error();
}

const char* launch_shuffle_after_exit(float* out, cudaStream_t stream) {
  launch_kernel<shuffle_after_exit_kernel>(dim3(1), dim3(64), stream, out);
  return last_launch_error();
}

const char* launch_read_half_written_tile(float* out, cudaStream_t stream) {
  launch_kernel<read_half_written_tile_kernel>(dim3(1), dim3(64), stream, out);
  return last_launch_error();
}

const char* launch_barrier_in_divergent_warp(float* out, cudaStream_t stream) {
  launch_kernel<barrier_in_divergent_warp_kernel>(dim3(1), dim3(64), stream, out);
  return last_launch_error();
}

// fill_kernel with any configuration, e.g. grid.y = 70000 or 1025 threads.
const char* launch_fill(float* out, unsigned grid_x, unsigned grid_y, unsigned threads, cudaStream_t stream) {
  launch_kernel<fill_kernel>(dim3(grid_x, grid_y), dim3(threads), stream, out, 2.0f);
  return last_launch_error();
}

const char* launch_too_much_shared(float* out, cudaStream_t stream) {
  launch_kernel<too_much_shared_kernel>(dim3(1), dim3(32), stream, out);
  return last_launch_error();
}

const char* launch_count(unsigned* counter, int blocks, int atomic, cudaStream_t stream) {
  if (atomic) {
    launch_kernel<count_kernel<true>>(dim3(blocks), dim3(kBlock), stream, counter);
  } else {
    launch_kernel<count_kernel<false>>(dim3(blocks), dim3(kBlock), stream, counter);
  }
  return last_launch_error();
}

const char* launch_warp_reductions(const float* in, float* out, int blocks, int threads, cudaStream_t stream) {
  launch_kernel<warp_reductions_kernel>(dim3(blocks), dim3(threads), stream, in, out);
  return last_launch_error();
}

}  // extern "C"
