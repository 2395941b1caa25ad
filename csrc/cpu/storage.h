// Storage types of the CPU kernels: float and double are stored and computed as they are;
// bfloat16 is stored as raw 16-bit words and computed in float. A kernel templated on its
// storage type S reads with load() and writes with store<S>(), and does its arithmetic (the
// statistics included) in compute_t<S>, so one template serves all three dtypes.
#pragma once
#include <bit>
#include <cstdint>

#include "vector_math.h"

namespace ddpm_fast {

// A bfloat16 value as it lies in memory: the upper 16 bits of a float32.
struct BFloat16Bits {
  uint16_t bits;
};

template <typename S>
struct ComputeType {
  using type = S;
};
template <>
struct ComputeType<BFloat16Bits> {
  using type = float;
};
// The arithmetic type for storage type S: float for bfloat16, S itself otherwise.
template <typename S>
using compute_t = typename ComputeType<S>::type;

template <typename S>
DDPM_FAST_INLINE compute_t<S> load(S v) {
  return v;
}
template <>
DDPM_FAST_INLINE float load(BFloat16Bits v) {
  return std::bit_cast<float>(uint32_t(v.bits) << 16);
}

template <typename S>
DDPM_FAST_INLINE S store(compute_t<S> v) {
  return v;
}
// float -> bfloat16 as torch rounds (c10::BFloat16's round_to_nearest_even): to nearest, ties
// to even, every NaN to 0x7FC0. Integer arithmetic and a select, so the loops vectorise.
template <>
DDPM_FAST_INLINE BFloat16Bits store<BFloat16Bits>(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return {uint16_t((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded)};
}

}  // namespace ddpm_fast
