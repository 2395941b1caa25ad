// Helpers shared by the .cu files: the kernel launch, shared-memory declarations, type
// conversion to and from the accumulation type, block reductions and launch-error reporting.
// CUDA headers only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

#if !defined(__CUDACC__)
// A host C++ compiler sees these files only through the CPU emulation of the CUDA execution
// model in tests/cuda_emulation, which supplies threadIdx, __syncthreads, shuffles, atomics and
// the launch itself, so that CI runs the kernels exactly as written.
#include "cuda_emulation.h"
#endif

namespace ddpm_fast {
namespace cuda {

// `type` unchanged: lets DDPM_SHARED name array types such as float[32] in one macro argument.
template <typename T> using shared_type = T;

// `DDPM_SHARED(float[32], partial);` declares `__shared__ float partial[32];`, one variable per
// block. A macro only because the emulation must give each block its own, poisoned, copy.
#if defined(__CUDACC__)
#define DDPM_SHARED(type, name) __shared__ ::ddpm_fast::cuda::shared_type<type> name
#else
#define DDPM_SHARED(type, name) CUDA_EMULATION_SHARED(::ddpm_fast::cuda::shared_type<type>, name)
#endif

// The one way the .cu files launch a kernel: `Kernel<<<grid, block, 0, stream>>>(args...)` under
// nvcc, the emulation's launch under a host compiler. Launchers check the result with
// last_launch_error(). GCC 12 never instantiates a kernel named only in a nested generic lambda
// when it depends on the outer lambda's parameters alone (the emulation then fails to load with
// "undefined symbol"): launch such a kernel from the outer lambda.
template <auto Kernel, typename... Args>
inline void launch_kernel(dim3 grid, dim3 block, cudaStream_t stream, const Args&... args) {
#if defined(__CUDACC__)
  Kernel<<<grid, block, 0, stream>>>(args...);
#else
  ::cuda_emulation::launch<Kernel>(grid, block, stream, args...);
#endif
}

// Accumulation type: fp64 for fp64, fp32 otherwise.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// Sum over a block of up to 1024 threads; every thread gets the result. `shared` holds 32 values.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? shared[lane] : A(0);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename A>
__device__ __forceinline__ A block_max(A v, A* shared) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? shared[lane] : shared[0];
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Activations in the accumulation type: 0 none, 1 SiLU, 2 exact (erf) GELU.
template <int ACT, typename A>
__device__ __forceinline__ A act_forward(A u) {
  if constexpr (ACT == 1) return u / (A(1) + exp(-u));
  else if constexpr (ACT == 2) return A(0.5) * u * (A(1) + erf(u * A(0.70710678118654752)));
  else return u;
}

template <int ACT, typename A>
__device__ __forceinline__ A act_derivative(A u) {
  if constexpr (ACT == 1) {
    const A s = A(1) / (A(1) + exp(-u));
    return s * (A(1) + u * (A(1) - s));
  } else if constexpr (ACT == 2) {
    return A(0.5) * (A(1) + erf(u * A(0.70710678118654752))) +
           u * exp(A(-0.5) * u * u) * A(0.3989422804014327);
  } else {
    return A(1);
  }
}

// The error of the last launch on this thread, as the launchers return it.
inline const char* last_launch_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

// Calls f.template operator()<T>() with T the element type of `dtype`.
template <typename F>
inline void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat64: f.template operator()<double>(); break;
    case DType::kFloat16: f.template operator()<__half>(); break;
    case DType::kBFloat16: f.template operator()<__nv_bfloat16>(); break;
    default: f.template operator()<float>(); break;
  }
}

template <typename F>
inline void dispatch_act(int act, F&& f) {
  switch (act) {
    case 1: f.template operator()<1>(); break;
    case 2: f.template operator()<2>(); break;
    default: f.template operator()<0>(); break;
  }
}

// An attribute of the current device, queried once per device: launchers size their grids by
// these on every launch.
template <cudaDeviceAttr Attribute>
inline int device_attribute(int fallback) {
  constexpr int kMaxDevices = 64;
  static int values[kMaxDevices] = {};
  int device = 0;
  cudaGetDevice(&device);
  if (device < 0 || device >= kMaxDevices) return fallback;
  if (values[device] == 0) {
    int value = 0;
    cudaDeviceGetAttribute(&value, Attribute, device);
    values[device] = value > 0 ? value : fallback;
  }
  return values[device];
}

// Streaming multiprocessors: the split reductions aim at a few blocks per SM.
inline int64_t sm_count() { return device_attribute<cudaDevAttrMultiProcessorCount>(80); }

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Kernels with one block row per sample, group or head index that row as grid_row() and launch
// row_grid(x, rows) blocks: grid.y may not pass the device's limit (65535 on every GPU, so a
// GroupNorm backward at batch 128 x 1024 channels would), and the rows beyond it continue in
// grid.z. The limit is queried rather than assumed so that the CPU emulation can run the
// overflow on small shapes, with a device of a lower limit. A kernel returns at once, before any
// barrier, when grid_row() >= rows (the last z slice is partly empty).
inline dim3 row_grid(unsigned x, int64_t rows) {
  const int64_t limit = device_attribute<cudaDevAttrMaxGridDimY>(65535);
  const int64_t y = rows < 1 ? 1 : (rows < limit ? rows : limit);
  return dim3(x, static_cast<unsigned>(y), static_cast<unsigned>(ceil_div(rows, y)));
}

__device__ __forceinline__ int64_t grid_row() { return int64_t(blockIdx.z) * gridDim.y + blockIdx.y; }

}  // namespace cuda
}  // namespace ddpm_fast
