// The active instruction-set level of the CPU kernels (see isa.h): chosen once at load, from
// the processor and DDPM_FAST_CPU_ISA, and changeable at run time.
#include "isa.h"

#include <atomic>
#include <cstdlib>

namespace ddpm_fast {
namespace {

bool supports(CpuIsa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();  // this runs in a static initializer, possibly before libgcc's own
  switch (isa) {
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    case CpuIsa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return isa == CpuIsa::kBaseline;
#endif
}

bool parse(const std::string& name, CpuIsa* isa) {
  if (name == "avx512") *isa = CpuIsa::kAvx512;
  else if (name == "avx2") *isa = CpuIsa::kAvx2;
  else if (name == "default") *isa = CpuIsa::kBaseline;
  else return false;
  return true;
}

CpuIsa best() {
  const auto levels = supported_cpu_isas();
  return levels.back();
}

std::string environment_problem;

CpuIsa initial() {
  const char* requested = std::getenv("DDPM_FAST_CPU_ISA");
  if (requested == nullptr || *requested == '\0') return best();
  CpuIsa isa;
  if (!parse(requested, &isa)) {
    environment_problem = std::string("DDPM_FAST_CPU_ISA=") + requested +
                          " is not one of avx512, avx2, default; using " + cpu_isa_name(best());
    return best();
  }
  if (!supports(isa)) {
    environment_problem = std::string("DDPM_FAST_CPU_ISA=") + requested + " but this processor lacks " +
                          requested + "; using " + cpu_isa_name(best());
    return best();
  }
  return isa;
}

std::atomic<CpuIsa> active{initial()};

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "default";
  }
}

std::vector<CpuIsa> supported_cpu_isas() {
  std::vector<CpuIsa> levels;
  for (CpuIsa isa : {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512})
    if (supports(isa)) levels.push_back(isa);
  return levels;
}

CpuIsa active_cpu_isa() { return active.load(std::memory_order_relaxed); }

std::string set_active_cpu_isa(const std::string& name) {
  CpuIsa isa;
  if (!parse(name, &isa)) return "cpu isa must be one of avx512, avx2, default, got '" + name + "'";
  if (!supports(isa)) return "this processor cannot run '" + name + "'";
  active.store(isa);
  return {};
}

const std::string& cpu_isa_environment_problem() { return environment_problem; }

}  // namespace ddpm_fast
