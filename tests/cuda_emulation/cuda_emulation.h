// The device side of the CPU emulation of the CUDA execution model: what a kernel in
// csrc/cuda/*.cu may use (threadIdx and friends, __syncthreads, warp shuffles and votes, atomics,
// the device math overloads, per-block shared memory) and the launch, for the host compiler.
//
// Model (runtime.cpp implements it):
// - every CUDA thread of a block is a fiber with its own stack; the threads of a block run
//   interleaved on one OS thread, switching only at __syncthreads and warp-level operations, in
//   an order given by the schedule (forward, reverse, or shuffled again at every barrier);
// - the blocks of a grid run concurrently on several OS threads, in the schedule's order;
// - __syncthreads is a barrier of the block's live threads; a barrier or warp operation that
//   can never complete is reported as a deadlock naming the kernel, never a hang;
// - warp shuffles are lockstep exchanges among the lanes of the mask, which must all exist, be
//   live and reach the same operation;
// - shared memory is per block and filled with 0xff bytes (NaN in every float type) before the
//   block runs, as is the top of every thread's stack (its uninitialised registers);
// - launches are checked against CUDA's limits and must use the current stream.
// fp16/bf16 are the toolkit's own cuda_fp16.h/cuda_bf16.h in host mode.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
// libstdc++'s <math.h> brings std's float overloads (exp(float), erf(float), ...) into the
// global namespace, so unqualified calls resolve as they do in device code: exp(float) is
// expf, never a silent double exp.
#include <math.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>

namespace cuda_emulation {

// The built-in variables of the thread that is running.
struct BuiltinIndices {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
// Points at the running fiber's indices; set by the scheduler before it resumes a fiber.
extern thread_local const BuiltinIndices* running;

void syncthreads();

enum class WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kSyncWarp, kBallot };
// Posts this lane's part of a warp-level operation and returns once every lane of `mask` has
// posted the same operation: its result for this lane (a shuffled value, or the ballot).
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int arg, int width);

// Address of the block's copy of the __shared__ variable declared at `site`.
void* shared_variable(const void* site, size_t bytes, size_t alignment, const char* name);

// Runs `body(args)` as every thread of every block of the grid; launch errors and faults are
// reported through cudaGetLastError(), as a real launch's are.
void run_grid(const char* kernel, dim3 grid, dim3 block, cudaStream_t stream,
              void (*body)(const void*), const void* args);

// The value of `Kernel = ...` in a __PRETTY_FUNCTION__.
inline std::string template_argument(std::string_view pretty) {
  const size_t begin = pretty.find("Kernel = ") + 9;
  return std::string(pretty.substr(begin, pretty.find_first_of(";]", begin) - begin));
}

// "ddpm_fast::cuda::{anonymous}::apply_kernel<float, 1>" for Kernel = apply_kernel<float, 1>.
template <auto Kernel>
const char* kernel_name() {
  static const std::string name = template_argument(__PRETTY_FUNCTION__);
  return name.c_str();
}

// The emulated `Kernel<<<grid, block, 0, stream>>>(args...)`: each thread calls the kernel with
// its own copies of the arguments, converted to the parameter types as a launch converts them.
template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, cudaStream_t stream, const Args&... args) {
  const std::tuple<Args...> bound(args...);
  run_grid(kernel_name<Kernel>(), grid, block, stream,
           [](const void* packed) { std::apply(Kernel, *static_cast<const std::tuple<Args...>*>(packed)); },
           &bound);
}

template <typename T>
uint64_t to_bits(T value) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp operations move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// The types CUDA's shuffles are overloaded for.
template <typename T>
constexpr bool kShuffleType =
    std::is_same_v<T, int> || std::is_same_v<T, unsigned> || std::is_same_v<T, long> ||
    std::is_same_v<T, unsigned long> || std::is_same_v<T, long long> ||
    std::is_same_v<T, unsigned long long> || std::is_same_v<T, float> || std::is_same_v<T, double> ||
    std::is_same_v<T, __half> || std::is_same_v<T, __half2> || std::is_same_v<T, __nv_bfloat16> ||
    std::is_same_v<T, __nv_bfloat162>;

template <typename T>
T shuffle(WarpOp op, unsigned mask, T var, int arg, int width) {
  static_assert(kShuffleType<T>, "CUDA has no shuffle for this type");
  return from_bits<T>(warp_exchange(op, mask, to_bits(var), arg, width));
}

}  // namespace cuda_emulation

// One __shared__ variable per block; see DDPM_SHARED in csrc/cuda/common.cuh. The static in the
// lambda is unique to each declaration (and template instantiation): the variable's identity.
#define CUDA_EMULATION_SHARED(type, name)                                                      \
  type& name = *static_cast<type*>(::cuda_emulation::shared_variable(                          \
      [] {                                                                                     \
        static const char site = 0;                                                            \
        return static_cast<const void*>(&site);                                                \
      }(),                                                                                     \
      sizeof(type), alignof(type), #name))

// ---- built-in variables
#define threadIdx (::cuda_emulation::running->thread_idx)
#define blockIdx (::cuda_emulation::running->block_idx)
#define blockDim (::cuda_emulation::running->block_dim)
#define gridDim (::cuda_emulation::running->grid_dim)
constexpr int warpSize = 32;

// ---- synchronisation and warp-level operations
inline void __syncthreads() { cuda_emulation::syncthreads(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  cuda_emulation::warp_exchange(cuda_emulation::WarpOp::kSyncWarp, mask, 0, 0, warpSize);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return cuda_emulation::shuffle(cuda_emulation::WarpOp::kShflIdx, mask, var, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return cuda_emulation::shuffle(cuda_emulation::WarpOp::kShflUp, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return cuda_emulation::shuffle(cuda_emulation::WarpOp::kShflDown, mask, var, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return cuda_emulation::shuffle(cuda_emulation::WarpOp::kShflXor, mask, var, lane_mask, width);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(
      cuda_emulation::warp_exchange(cuda_emulation::WarpOp::kBallot, mask, predicate != 0, 0, warpSize));
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }

// ---- atomics: real atomics, since the blocks of a grid run on several OS threads
#define CUDA_EMULATION_ATOMIC_ADD(T)                                                         \
  inline T atomicAdd(T* address, T value) { return std::atomic_ref<T>(*address).fetch_add(value); }
CUDA_EMULATION_ATOMIC_ADD(int)
CUDA_EMULATION_ATOMIC_ADD(unsigned)
CUDA_EMULATION_ATOMIC_ADD(unsigned long long)
CUDA_EMULATION_ATOMIC_ADD(float)
CUDA_EMULATION_ATOMIC_ADD(double)
#undef CUDA_EMULATION_ATOMIC_ADD

template <typename T>
T atomicCAS(T* address, T compare, T value) {
  static_assert(std::is_same_v<T, int> || std::is_same_v<T, unsigned> || std::is_same_v<T, unsigned long long>);
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
  return compare;
}
template <typename T>
T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value);
}
template <typename T>
T atomicMax(T* address, T value) {
  static_assert(std::is_integral_v<T>, "CUDA's atomicMax takes integers");
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  static_assert(std::is_integral_v<T>, "CUDA's atomicMin takes integers");
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old > value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}

// ---- the device math overloads CUDA adds to the global namespace
// min/max: CUDA's overload set, so a call that is ambiguous on the device is ambiguous here.
#define CUDA_EMULATION_MIN_MAX(T)                          \
  inline T max(T a, T b) { return a > b ? a : b; }         \
  inline T min(T a, T b) { return a < b ? a : b; }
CUDA_EMULATION_MIN_MAX(int)
CUDA_EMULATION_MIN_MAX(unsigned)
CUDA_EMULATION_MIN_MAX(long)
CUDA_EMULATION_MIN_MAX(unsigned long)
CUDA_EMULATION_MIN_MAX(long long)
CUDA_EMULATION_MIN_MAX(unsigned long long)
#undef CUDA_EMULATION_MIN_MAX
inline float max(float a, float b) { return fmaxf(a, b); }
inline float min(float a, float b) { return fminf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double max(double a, float b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double min(double a, float b) { return fmin(a, b); }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float rsqrt(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }

inline float __int_as_float(int v) { return cuda_emulation::from_bits<float>(static_cast<unsigned>(v)); }
inline float __uint_as_float(unsigned v) { return cuda_emulation::from_bits<float>(v); }
inline int __float_as_int(float v) { return static_cast<int>(cuda_emulation::to_bits(v)); }
inline unsigned __float_as_uint(float v) { return static_cast<unsigned>(cuda_emulation::to_bits(v)); }
inline double __longlong_as_double(long long v) { return cuda_emulation::from_bits<double>(static_cast<uint64_t>(v)); }
inline long long __double_as_longlong(double v) { return static_cast<long long>(cuda_emulation::to_bits(v)); }

// The kernels' float arithmetic must stay float, as it is on the device.
static_assert(std::is_same_v<decltype(exp(1.0f)), float>, "exp(float) must be the float overload");
static_assert(std::is_same_v<decltype(erf(1.0f)), float>, "erf(float) must be the float overload");
static_assert(std::is_same_v<decltype(sqrt(1.0f)), float>, "sqrt(float) must be the float overload");
static_assert(std::is_same_v<decltype(log(1.0f)), float>, "log(float) must be the float overload");
static_assert(std::is_same_v<decltype(tanh(1.0f)), float>, "tanh(float) must be the float overload");
static_assert(std::is_same_v<decltype(max(1.0f, 2.0f)), float>, "max(float, float) must be float");
