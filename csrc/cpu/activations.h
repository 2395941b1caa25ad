// Scalar activation functions and their derivatives, shared by the CPU kernels; written with
// fast_exp / fast_erf so the loops that call them vectorise.
#pragma once
#include <cmath>

#include "../checks.h"
#include "vector_math.h"

namespace ddpm_fast {

template <Act A, typename T>
DDPM_FAST_INLINE T act_forward(T u) {
  if constexpr (A == Act::kSilu) {
    return u / (T(1) + fast_exp(-u));
  } else if constexpr (A == Act::kGelu) {  // exact (erf) GELU, as nn.GELU()
    return T(0.5) * u * (T(1) + fast_erf(u * T(M_SQRT1_2)));
  } else {
    return u;
  }
}

template <Act A, typename T>
DDPM_FAST_INLINE T act_derivative(T u) {
  if constexpr (A == Act::kSilu) {
    const T s = T(1) / (T(1) + fast_exp(-u));
    return s * (T(1) + u * (T(1) - s));
  } else if constexpr (A == Act::kGelu) {
    const T cdf = T(0.5) * (T(1) + fast_erf(u * T(M_SQRT1_2)));
    const T pdf = fast_exp(T(-0.5) * u * u) * T(0.3989422804014327);  // 1/sqrt(2*pi)
    return cdf + u * pdf;
  } else {
    return T(1);
  }
}

// Calls f.template operator()<A>() with the activation as a compile-time constant, so every
// kernel loop is specialised and the identity case costs nothing.
template <typename F>
inline void dispatch_act(Act act, F&& f) {
  switch (act) {
    case Act::kSilu: f.template operator()<Act::kSilu>(); break;
    case Act::kGelu: f.template operator()<Act::kGelu>(); break;
    default: f.template operator()<Act::kNone>(); break;
  }
}

}  // namespace ddpm_fast
