// The instruction-set level of the CPU kernels.
//
// Every CPU kernel is compiled three times: for AVX-512, for AVX2 (with FMA) and for baseline
// x86-64, each with vectors of its own width (vector_bytes<I>), and runs at one level: the best
// the processor supports, or the level DDPM_FAST_CPU_ISA names (avx512, avx2 or default) when
// it is set at load; set_active_cpu_isa() changes it at run time, for tests and benchmarks.
//
// How a kernel gets its three builds: the caller passes dispatch_isa() a lambda templated on the
// level and marked DDPM_FAST_ISA_LAMBDA (always inline); dispatch_isa runs it inside a function
// compiled for the active level, where the lambda and every DDPM_FAST_INLINE helper it calls are
// inlined, and so compiled for that level too. (GCC's target_clones cannot be forced to a level,
// and its AVX2 clone lowered the 64-byte vectors written for AVX-512 to scalar code.)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ddpm_fast {

enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// Bytes per SIMD register at each level: 16 (SSE2, or NEON off x86), 32 or 64.
template <CpuIsa I>
constexpr int vector_bytes = I == CpuIsa::kAvx512 ? 64 : (I == CpuIsa::kAvx2 ? 32 : 16);

// "avx512", "avx2" or "default".
const char* cpu_isa_name(CpuIsa isa);
// The levels this processor runs, baseline first.
std::vector<CpuIsa> supported_cpu_isas();
CpuIsa active_cpu_isa();
// Sets the level the kernels run at; returns an empty string, or why it cannot (an unknown name,
// or a level the processor lacks) and changes nothing.
std::string set_active_cpu_isa(const std::string& name);
// Why DDPM_FAST_CPU_ISA was not followed at load (unknown or unsupported), or empty.
const std::string& cpu_isa_environment_problem();

#define DDPM_FAST_ISA_LAMBDA __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define DDPM_FAST_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#define DDPM_FAST_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define DDPM_FAST_TARGET_AVX512
#define DDPM_FAST_TARGET_AVX2
#endif

template <typename F>
DDPM_FAST_TARGET_AVX512 void run_avx512(F& f) {
  f.template operator()<CpuIsa::kAvx512>();
}

template <typename F>
DDPM_FAST_TARGET_AVX2 void run_avx2(F& f) {
  f.template operator()<CpuIsa::kAvx2>();
}

template <typename F>
void run_baseline(F& f) {
  f.template operator()<CpuIsa::kBaseline>();
}

// Runs f.template operator()<I>() for the active level I, compiled for that level.
template <typename F>
inline void dispatch_isa(F&& f) {
  switch (active_cpu_isa()) {
    case CpuIsa::kAvx512: run_avx512(f); break;
    case CpuIsa::kAvx2: run_avx2(f); break;
    default: run_baseline(f); break;
  }
}

}  // namespace ddpm_fast
