// The host side of the CUDA emulation that its other parts (the guarded allocator, the op
// library) and the Python driver (through the extern "C" functions) use.
#pragma once
#include <cuda_runtime.h>

#include <string>

namespace cuda_emulation {

// The handle the emulated torch shim reports as the current CUDA stream. Launches and memsets
// on any other stream are reported: kernels must run on the current stream (CUDA graphs and
// user streams depend on it).
cudaStream_t current_stream();

// Records a fault of the running launch (or of the next one to finish): it fails with
// cudaErrorLaunchFailure and the message, and Python's take_faults() returns it.
void report_fault(const std::string& message);

// Called after every launch and memset with its name, on the launching thread.
void add_after_launch_check(void (*check)(const char* what));

}  // namespace cuda_emulation

extern "C" {
// Schedule of the threads and blocks: "forward", "reverse" or "shuffled" (seeded); `workers`
// OS threads run blocks concurrently; `device` is the current device: 0 (an H100's SM count and
// CUDA's limits) or 1 (small: 4 SMs, grid.y at most 3). Returns 0, or -1 for an unknown
// schedule or device.
int cuda_emulation_configure(const char* schedule, int workers, unsigned long long seed, int device);
// The handle launches must use: current_stream().
void* cuda_emulation_current_stream();
// Faults reported since the last clear, one per line.
const char* cuda_emulation_faults();
void cuda_emulation_clear_faults();
// "kernel|grid.x,grid.y,grid.z|block.x,block.y,block.z" for each launch since the last clear, one per line.
const char* cuda_emulation_launch_log();
void cuda_emulation_clear_launch_log();
// While on, CPU tensors are allocated with guard regions and 0xff poison (guarded_memory.cpp).
void cuda_emulation_guard_memory(int on);
}
