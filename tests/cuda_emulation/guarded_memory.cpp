// Guarded, poisoned CPU memory for the emulated kernels. While it is on, every CPU tensor torch
// allocates lies between two guard regions and starts out filled with 0xff bytes (NaN in every
// float type): a kernel that writes out of bounds is reported after its launch, and one that
// leaves an output element unwritten, or reads workspace nobody initialised, produces NaN.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "emulation_runtime.h"

namespace cuda_emulation {
namespace {

constexpr size_t kGuardBytes = 1024;
constexpr size_t kAlignment = 64;  // c10's alignment for CPU tensors
constexpr unsigned char kPoison = 0xff;

struct Allocation {
  char* base;     // start of the front guard
  size_t bytes;   // what was asked for; everything after it up to the back guard's end is guard
  size_t total;   // front guard + rounded payload + back guard
};

std::mutex allocations_mutex;
std::unordered_map<void*, Allocation> allocations;  // by data pointer
std::atomic<bool> guarding{false};
c10::Allocator* fallback = nullptr;  // the CPU allocator torch had

// Reports (and re-poisons) any guard byte of `a` that is no longer poison.
void check(void* data, Allocation& a, const std::string& when) {
  char* const front_end = a.base + kGuardBytes;
  char* const back_begin = front_end + a.bytes;
  for (char* p = a.base; p < front_end; ++p) {
    if (static_cast<unsigned char>(*p) != kPoison) {
      report_fault("cuda emulation: " + when + " wrote " + std::to_string(front_end - p) +
                   " bytes before the start of a " + std::to_string(a.bytes) + "-byte allocation");
      std::memset(a.base, kPoison, kGuardBytes);
      break;
    }
  }
  for (char* p = back_begin; p < a.base + a.total; ++p) {
    if (static_cast<unsigned char>(*p) != kPoison) {
      report_fault("cuda emulation: " + when + " wrote at byte " + std::to_string(p - back_begin) +
                   " past the end of a " + std::to_string(a.bytes) + "-byte allocation");
      std::memset(back_begin, kPoison, a.base + a.total - back_begin);
      break;
    }
  }
  (void)data;
}

void check_all(const char* what) {
  std::lock_guard<std::mutex> lock(allocations_mutex);
  for (auto& [data, allocation] : allocations) check(data, allocation, what);
}

void free_guarded(void* data) {
  std::lock_guard<std::mutex> lock(allocations_mutex);
  auto it = allocations.find(data);
  check(data, it->second, "a kernel (found when the tensor was freed)");
  std::free(it->second.base);
  allocations.erase(it);
}

void free_any(void* data) {
  {
    std::lock_guard<std::mutex> lock(allocations_mutex);
    if (allocations.find(data) == allocations.end()) {
      fallback->raw_deleter()(data);
      return;
    }
  }
  free_guarded(data);
}

class GuardedAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (!guarding.load() || bytes == 0) return fallback->allocate(bytes);
    const size_t payload = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    const size_t total = kGuardBytes + payload + kGuardBytes;
    char* base = static_cast<char*>(std::aligned_alloc(kAlignment, total));
    if (base == nullptr) throw std::bad_alloc();
    std::memset(base, kPoison, total);
    char* data = base + kGuardBytes;
    {
      std::lock_guard<std::mutex> lock(allocations_mutex);
      allocations[data] = Allocation{base, bytes, total};
    }
    return {data, data, &free_guarded, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_any; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

GuardedAllocator allocator;

// Installed once, when the library loads; it passes everything through until guarding is on.
const bool installed = [] {
  fallback = c10::GetCPUAllocator();
  c10::SetCPUAllocator(&allocator, /*priority=*/100);
  add_after_launch_check(&check_all);
  return true;
}();

}  // namespace
}  // namespace cuda_emulation

extern "C" void cuda_emulation_guard_memory(int on) { cuda_emulation::guarding = on != 0; }
