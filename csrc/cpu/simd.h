// One SIMD register's worth of floats or doubles as a GCC vector type, at each instruction-set
// level's width (isa.h): Vec<T, vector_bytes<I>>::V, with Vec<...>::lanes values. Arithmetic on
// them compiles to one instruction per operation at the level the caller is compiled for; a type
// wider than that level's registers is split into scalar code by GCC, so each level uses its own.
#pragma once
#include <cstdint>
#include <cstring>

#include "isa.h"
#include "vector_math.h"

namespace ddpm_fast {

template <typename T, int Bytes>
struct Vec;

// GCC drops vector_size on a dependent type, so each (type, width) is spelled out.
#define DDPM_FAST_VEC(T, BYTES)                                \
  template <>                                                  \
  struct Vec<T, BYTES> {                                       \
    typedef T V __attribute__((vector_size(BYTES)));           \
    static constexpr int lanes = BYTES / int(sizeof(T));       \
  };
DDPM_FAST_VEC(float, 16)
DDPM_FAST_VEC(float, 32)
DDPM_FAST_VEC(float, 64)
DDPM_FAST_VEC(double, 16)
DDPM_FAST_VEC(double, 32)
DDPM_FAST_VEC(double, 64)
#undef DDPM_FAST_VEC

// Scratch rows are padded to 64 bytes, a whole number of vectors at every level, so one layout
// serves all three builds of a kernel.
template <typename T>
constexpr int64_t padded_length(int64_t n) {
  constexpr int64_t lanes = 64 / sizeof(T);
  return (n + lanes - 1) / lanes * lanes;
}

template <typename T, int Bytes>
DDPM_FAST_INLINE typename Vec<T, Bytes>::V load_vec(const T* p) {
  typename Vec<T, Bytes>::V v;
  std::memcpy(&v, p, sizeof(v));  // an unaligned vector load
  return v;
}

// The first `count` lanes of v to p.
template <typename T, int Bytes>
DDPM_FAST_INLINE void store_vec(T* p, typename Vec<T, Bytes>::V v, int count) {
  if (count == Vec<T, Bytes>::lanes) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    for (int t = 0; t < count; ++t) p[t] = v[t];
  }
}

}  // namespace ddpm_fast
