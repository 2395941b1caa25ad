// Vectorisable math for the CPU kernels.
//
// std::exp is a scalar libm call, so a loop calling it never vectorises; fast_exp below is a
// branch-free Cephes-style polynomial that GCC turns into SIMD code, at whatever instruction-set
// level the calling kernel is compiled for (isa.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <bit>

// Every helper of a kernel is inlined into its caller, so that it is compiled for the caller's
// instruction-set level (isa.h).
#define DDPM_FAST_INLINE inline __attribute__((always_inline))

namespace ddpm_fast {

// exp(x) for float, within 2 ulp for x in [-87, 88]; inputs outside are clamped (results
// below 1e-38 are not needed by a softmax, whose largest term is exp(0) = 1).
DDPM_FAST_INLINE float fast_exp(float x) {
  // Ternaries, not fmin/fmax, and rounding by integer conversion: these vectorise (with
  // -fno-trapping-math), where floor and fmin do not on every target.
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float k = static_cast<float>(static_cast<int32_t>(x * 1.44269504088896341f + (x < 0.0f ? -0.5f : 0.5f)));
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(k) + 127) << 23);
}

// erf(x) for float by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), built on
// fast_exp so that GELU loops vectorise.
DDPM_FAST_INLINE float fast_erf(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * fast_exp(-ax * ax);
  return x < 0.0f ? -y : y;
}

// Doubles only serve tests (gradcheck), where exactness beats speed.
DDPM_FAST_INLINE double fast_exp(double x) { return std::exp(x); }
DDPM_FAST_INLINE double fast_erf(double x) { return std::erf(x); }

}  // namespace ddpm_fast
