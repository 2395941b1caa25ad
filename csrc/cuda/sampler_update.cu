// CUDA kernels of sampler_update, the one update step shared by the DDPM, DDIM, DPM-Solver++ and
// SDE-DPM-Solver++ samplers, for any prediction type: per sample, the data prediction x0
// (clipped or dynamically thresholded when asked) and an affine combination of up to five
// inputs. Memory bound.
// Parallelisation of the update: as q_sample.cu, grid_row() = sample (so its step and seven
// coefficients are read once per block), blockIdx.x = tiles of kThreads * kVec elements of that
// sample, grid-strided; element k * kThreads + threadIdx.x of a tile keeps warp accesses
// coalesced.
// Dynamic thresholding first runs threshold_scale_kernel, one block per sample: the quantile of
// |x0| by a radix select over its bits (8 bits a pass, a shared 256-bin histogram), into a (B,)
// buffer of scales that the update reads on the device, so no host sync.
#include "common.cuh"

namespace ddpm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;
constexpr int kCoefficients = 7;
constexpr int kRadixBins = 256;

// The sample's coefficient row in the accumulation type; an out-of-range step gives NaN, so
// the sample's outputs are NaN: checking it would need a host sync.
template <typename A>
__device__ __forceinline__ void load_row(const SamplerUpdateParams& p, int64_t b, A (&c)[kCoefficients]) {
  const int64_t s = p.step[b];
  const bool valid = s >= 0 && s < p.steps;
  const A* row = static_cast<const A*>(p.coefs) + (valid ? s : 0) * kCoefficients;
  const A nan = A(__int_as_float(0x7fc00000));
#pragma unroll
  for (int j = 0; j < kCoefficients; ++j) c[j] = valid ? row[j] : nan;
}

// Bits of a non-negative float or double that order as the values do.
template <typename A> struct OrderKey;
template <> struct OrderKey<float> {
  using type = unsigned;
  __device__ static type of(float v) { return __float_as_uint(v); }
  __device__ static float value(type k) { return __uint_as_float(k); }
};
template <> struct OrderKey<double> {
  using type = unsigned long long;
  __device__ static type of(double v) { return static_cast<type>(__double_as_longlong(v)); }
  __device__ static double value(type k) { return __longlong_as_double(static_cast<long long>(k)); }
};

// The k-th smallest (0-based) of the block's n keys key(i), by radix select: each pass counts
// the keys that match the digits found so far into 256 bins of the next 8 bits, and thread 0
// picks the bin holding rank k. Every thread of the block calls it and gets the result.
template <typename K, typename KeyOf>
__device__ K block_select(int64_t n, int64_t k, KeyOf key, unsigned* histogram, K* found, int64_t* rank) {
  K prefix = 0, mask = 0;
  for (int shift = int(sizeof(K)) * 8 - 8; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < kRadixBins; d += blockDim.x) histogram[d] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const K v = key(i);
      if ((v & mask) == prefix) atomicAdd(histogram + int((v >> shift) & K(kRadixBins - 1)), 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t below = 0;
      int d = 0;
      for (; d < kRadixBins - 1 && below + histogram[d] <= k; ++d) below += histogram[d];
      *rank = k - below;
      *found = prefix | (K(d) << shift);
    }
    __syncthreads();  // the next pass clears the histogram only after thread 0 has read it
    k = *rank;
    prefix = *found;
    mask |= K(kRadixBins - 1) << shift;
  }
  return prefix;
}

// scales[b] = clamp(quantile(|x0|, ratio), 1, sample_max_value) over sample b's elements, with
// x0 = c5 x + c6 m and torch.quantile's interpolation between the two order statistics around
// ratio * (n - 1). A NaN ranks as +inf, as on the CPU.
template <typename T>
__global__ void threshold_scale_kernel(SamplerUpdateParams p) {
  using A = acc_t<T>;
  using Key = OrderKey<A>;
  using K = typename Key::type;
  DDPM_SHARED(unsigned[kRadixBins], histogram);
  DDPM_SHARED(K[1], found);
  DDPM_SHARED(int64_t[1], rank);
  const int64_t b = grid_row();
  if (b >= p.batch) return;
  A c[kCoefficients];
  load_row(p, b, c);
  const int64_t offset = b * p.per_sample;
  const T* x = static_cast<const T*>(p.x) + offset;
  const T* m = static_cast<const T*>(p.model_output) + offset;
  const K infinity = Key::of(A(__int_as_float(0x7f800000)));
  auto key = [&](int64_t i) {
    const A v = c[5] * to_acc(x[i]) + c[6] * to_acc(m[i]);
    const A magnitude = v < A(0) ? -v : v;
    return magnitude != magnitude ? infinity : Key::of(magnitude);
  };
  const double position = p.dynamic_thresholding_ratio * double(p.per_sample - 1);
  const int64_t below = int64_t(position);
  const int64_t above = below + 1 < p.per_sample ? below + 1 : below;
  const A weight = A(position - double(below));
  const A lo = Key::value(block_select<K>(p.per_sample, below, key, histogram, found, rank));
  const A hi = above == below ? lo : Key::value(block_select<K>(p.per_sample, above, key, histogram, found, rank));
  // torch.lerp's two-sided form, as torch.quantile computes it.
  const A q = weight < A(0.5) ? lo + weight * (hi - lo) : hi - (hi - lo) * (A(1) - weight);
  const A high = A(p.sample_max_value);
  if (threadIdx.x == 0) static_cast<A*>(p.scales)[b] = q < A(1) ? A(1) : (q > high ? high : q);
}

template <typename T>
__global__ void sampler_update_kernel(SamplerUpdateParams p) {
  using A = acc_t<T>;
  const int64_t b = grid_row();
  if (b >= p.batch) return;
  A c[kCoefficients];
  load_row(p, b, c);
  // x0 is clamped to [-lim, lim] and divided by div: clipping has div = 1, thresholding the
  // sample's scale for both.
  const bool clamp = p.scales != nullptr || p.clip_sample_range > 0;
  const A lim = p.scales ? static_cast<const A*>(p.scales)[b] : A(p.clip_sample_range);
  const A div = p.scales ? lim : A(1);
  const int64_t offset = b * p.per_sample;
  const T* x = static_cast<const T*>(p.x) + offset;
  const T* m = static_cast<const T*>(p.model_output) + offset;
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
        const A xv = to_acc(x[i]), mv = to_acc(m[i]);
        A data = c[5] * xv + c[6] * mv;
        // Comparisons, not fminf/fmaxf, so that a NaN stays NaN as in torch.clamp.
        if (clamp) data = (data < -lim ? -lim : (data > lim ? lim : data)) / div;
        A v = c[0] * xv + c[1] * mv + c[2] * data;
        if (prev) v += c[3] * to_acc(prev[i]);
        if (noise) v += c[4] * to_acc(noise[i]);
        out[i] = from_acc<T>(v);
        x0[i] = from_acc<T>(data);
      }
    }
  }
}

}  // namespace

const char* launch_sampler_update(const SamplerUpdateParams& p, void* stream) {
  if (p.batch == 0 || p.per_sample == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = ceil_div(p.per_sample, int64_t(kThreads) * kVec);
  const dim3 grid = row_grid(static_cast<unsigned>(chunks < 65535 ? chunks : 65535), p.batch);
  dispatch_dtype(p.dtype, [&]<typename T>() {
    if (p.scales) launch_kernel<threshold_scale_kernel<T>>(row_grid(1, p.batch), dim3(kThreads), s, p);
    launch_kernel<sampler_update_kernel<T>>(grid, dim3(kThreads), s, p);
  });
  return last_launch_error();
}

}  // namespace cuda
}  // namespace ddpm_fast
