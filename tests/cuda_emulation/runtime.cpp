// The CUDA execution model on the CPU (see cuda_emulation.h for the model): emulated threads as
// fibers, the per-block scheduler with barriers and warp exchanges, grids run by a few OS
// threads, launch checks, faults, and the part of the CUDA runtime API the launchers call.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emulation.h"
#include "emulation_runtime.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emulation {

thread_local const BuiltinIndices* running = nullptr;

namespace {

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxGridX = 2147483647u;
constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr size_t kSharedRedzone = 1024;       // after the last shared variable, checked per block
constexpr size_t kStackBytes = 256 * 1024;    // per emulated thread, plus a guard page
constexpr size_t kFirstStackPoison = 16 * 1024;
constexpr unsigned char kPoison = 0xff;       // NaN in fp64, fp32, fp16 and bf16; -1 in integers
constexpr int kWarpSize = 32;

// The emulated devices. Device 0 has an H100's SM count and CUDA's grid limits; device 1 is
// deliberately small (4 SMs, grid.y of at most 3), so that tests run what the kernels do past
// 65535 rows of blocks on small inputs.
struct Device {
  int sm_count;
  unsigned max_grid_y, max_grid_z;
};
constexpr Device kDevices[] = {{132, 65535, 65535}, {4, 3, 65535}};
constexpr int kDeviceCount = sizeof(kDevices) / sizeof(kDevices[0]);

struct Config {
  enum class Order { kForward, kReverse, kShuffled } order = Order::kForward;
  int workers = 2;
  uint64_t seed = 0;
  int device = 0;  // what cudaGetDevice reports
};
Config config;
std::mutex config_mutex;

// ---------------------------------------------------------------- faults and the launch log

std::mutex log_mutex;
std::vector<std::string> faults;
std::string faults_text;
std::vector<std::string> launch_log;
std::string launch_log_text;
std::vector<void (*)(const char*)> after_launch_checks;

// Faults of the launch in progress, on the launching thread (workers report into it too).
struct LaunchFaults {
  std::mutex mutex;
  std::string first;
  void add(const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex);
    if (first.empty()) first = message;
  }
};
LaunchFaults* active_launch = nullptr;

thread_local cudaError_t last_error = cudaSuccess;
thread_local std::string last_error_detail;

void set_error(cudaError_t error, const std::string& detail) {
  last_error = error;
  last_error_detail = detail;
}

std::string dims(uint3 d) {
  std::ostringstream out;
  out << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return out.str();
}

// ---------------------------------------------------------------- fibers

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *from and
// continues on stack `to`. The floating-point environment is shared by all fibers.
extern "C" void cuda_emulation_switch(void** from, void* to);
asm(R"(
  .text
  .p2align 4
  .type cuda_emulation_switch, @function
cuda_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emulation_switch, .-cuda_emulation_switch
)");

struct Context {
  void* sp = nullptr;
};

void switch_context(Context& from, const Context& to) { cuda_emulation_switch(&from.sp, to.sp); }

// Prepares `context` to start `entry` on the stack ending at `top` (16-byte aligned): six zero
// registers for cuda_emulation_switch to pop, then `entry` as its return address.
void start_context(Context& context, char* top, void (*entry)()) {
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;  // entry's own return address: it never returns
  *--sp = reinterpret_cast<void*>(entry);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  context.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};

void switch_context(Context& from, const Context& to) { swapcontext(&from.uc, &to.uc); }

void start_context(Context& context, char* top, void (*entry)()) {
  getcontext(&context.uc);
  context.uc.uc_stack.ss_sp = top - kStackBytes;
  context.uc.uc_stack.ss_size = kStackBytes;
  context.uc.uc_link = nullptr;
  makecontext(&context.uc, entry, 0);
}
#endif

// An emulated thread's stack: kStackBytes with a guard page below, so an overflow faults.
class Stack {
 public:
  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    bytes_ = kStackBytes + page;
    void* memory = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<char*>(memory);
    mprotect(base_, page, PROT_NONE);
  }
  ~Stack() { munmap(base_, bytes_); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* top() const { return base_ + bytes_; }

  // How deep below top() the previous run wrote, judged from the poison it left, within `depth`.
  size_t used_depth(size_t depth) const {
    const char* low = top() - depth;
    size_t i = 0;
    while (i < depth && static_cast<unsigned char>(low[i]) == kPoison) ++i;
    return depth - i;
  }

 private:
  char* base_ = nullptr;
  size_t bytes_ = 0;
};

enum class State : uint8_t { kReady, kAtBarrier, kAtWarpOp, kExited };

struct WarpPost {
  WarpOp op;
  unsigned mask;
  uint64_t value;
  int arg;
  int width;
  uint64_t result;
};

struct Fiber {
  BuiltinIndices indices{};
  int linear = 0, warp = 0, lane = 0;
  State state = State::kReady;
  Context context;
  WarpPost post{};
};

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kSyncWarp: return "__syncwarp";
    case WarpOp::kBallot: return "__ballot_sync";
  }
  return "?";
}

std::string hex(unsigned v) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "0x%08x", v);
  return buffer;
}

// One launch as the workers see it.
struct Grid {
  const char* kernel;
  Config::Order order;
  dim3 grid, block;
  unsigned threads;  // per block
  void (*body)(const void*);
  const void* args;
  std::vector<uint32_t> block_order;  // linear block ids in the order they start
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<size_t> stack_poison{kFirstStackPoison};  // narrowed after a first block has run
  std::atomic<bool> stack_measured{false};
};

// Runs blocks on one OS thread: the fibers of the running block, its shared memory and its
// scheduler. Reused from block to block and launch to launch.
class Worker {
 public:
  void reseed(uint64_t seed) { rng_.seed(seed); }

  // Runs block `linear_block` of `grid` to completion; false, with the fault reported, when it
  // deadlocked or broke a rule of the execution model.
  bool run_block(Grid& grid, uint32_t linear_block);

  void syncthreads();
  uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int arg, int width);
  void* shared_variable(const void* site, size_t bytes, size_t alignment, const char* name);
  // Where a fiber starts: runs the kernel as the current thread, then finishes it.
  [[noreturn]] static void fiber_entry();

 private:
  struct SharedSlot {
    const void* site;
    size_t offset;
  };

  void start_fibers(Grid& grid, uint3 block_idx);
  [[noreturn]] void finish_current();
  void resume(Fiber& fiber);
  void yield() { switch_context(current_->context, scheduler_); }
  [[noreturn]] void fail(const std::string& what);
  std::string where() const;
  std::string describe_deadlock() const;
  void complete_warp_op(int warp, const WarpPost& post);
  void reorder();

  std::vector<std::unique_ptr<Stack>> stacks_;
  std::vector<Fiber> fibers_;
  std::vector<unsigned> posted_, exited_;  // per warp: lanes waiting in a warp operation, lanes exited
  std::vector<int> order_;
  std::vector<unsigned char> shared_ = std::vector<unsigned char>(kStaticSharedLimit + kSharedRedzone, kPoison);
  std::vector<SharedSlot> slots_;
  size_t shared_used_ = 0, shared_dirty_ = kStaticSharedLimit + kSharedRedzone;
  Context scheduler_;
  Fiber* current_ = nullptr;
  Grid* grid_ = nullptr;
  uint3 block_idx_{};
  int live_ = 0, at_barrier_ = 0;
  std::string fault_;
  std::mt19937_64 rng_;
};

thread_local Worker* this_worker = nullptr;

void Worker::fiber_entry() {
  Worker& worker = *this_worker;
  worker.grid_->body(worker.grid_->args);
  worker.finish_current();
}

std::string Worker::where() const {
  std::ostringstream out;
  out << "kernel " << grid_->kernel << ", block " << dims(block_idx_);
  if (current_) {
    const uint3 t = current_->indices.thread_idx;
    out << ", thread " << dims(t) << " (warp " << current_->warp << ", lane " << current_->lane << ")";
  }
  return out.str();
}

void Worker::fail(const std::string& what) {
  fault_ = "cuda emulation: " + what + " [" + where() + "]";
  yield();  // the scheduler abandons this fiber: it is never resumed
  __builtin_unreachable();
}

void Worker::reorder() {
  const int n = static_cast<int>(order_.size());
  switch (grid_->order) {
    case Config::Order::kForward: std::iota(order_.begin(), order_.end(), 0); break;
    case Config::Order::kReverse:
      for (int i = 0; i < n; ++i) order_[i] = n - 1 - i;
      break;
    case Config::Order::kShuffled:
      std::iota(order_.begin(), order_.end(), 0);
      std::shuffle(order_.begin(), order_.end(), rng_);
      break;
  }
}

void Worker::start_fibers(Grid& grid, uint3 block_idx) {
  const unsigned n = grid.threads;
  while (stacks_.size() < n) stacks_.push_back(std::make_unique<Stack>());
  fibers_.resize(n);
  order_.resize(n);
  posted_.assign((n + kWarpSize - 1) / kWarpSize, 0u);
  exited_.assign((n + kWarpSize - 1) / kWarpSize, 0u);
  const size_t poison = grid.stack_poison.load(std::memory_order_relaxed);
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = fibers_[i];
    f.indices.thread_idx = make_uint3(i % grid.block.x, (i / grid.block.x) % grid.block.y,
                                      i / (grid.block.x * grid.block.y));
    f.indices.block_idx = block_idx;
    f.indices.block_dim = grid.block;
    f.indices.grid_dim = grid.grid;
    f.linear = static_cast<int>(i);
    f.warp = static_cast<int>(i / kWarpSize);
    f.lane = static_cast<int>(i % kWarpSize);
    f.state = State::kReady;
    // The thread's uninitialised locals (its registers on a GPU) read as poison.
    std::memset(stacks_[i]->top() - poison, kPoison, poison);
    start_context(f.context, stacks_[i]->top(), &Worker::fiber_entry);
  }
  std::memset(shared_.data(), kPoison, shared_dirty_);
  slots_.clear();
  shared_used_ = 0;
  live_ = static_cast<int>(n);
  at_barrier_ = 0;
  fault_.clear();
  reorder();
}

void Worker::resume(Fiber& fiber) {
  current_ = &fiber;
  running = &fiber.indices;
  switch_context(scheduler_, fiber.context);
  current_ = nullptr;
  running = nullptr;
}

bool Worker::run_block(Grid& grid, uint32_t linear_block) {
  grid_ = &grid;
  const uint3 block_idx = make_uint3(linear_block % grid.grid.x, (linear_block / grid.grid.x) % grid.grid.y,
                                     linear_block / (grid.grid.x * grid.grid.y));
  block_idx_ = block_idx;
  start_fibers(grid, block_idx);
  while (live_ > 0) {
    bool ran = false;
    for (int i : order_) {
      if (fibers_[i].state != State::kReady) continue;
      resume(fibers_[i]);
      ran = true;
      if (!fault_.empty()) break;
    }
    if (!fault_.empty()) break;
    if (ran || live_ == 0) continue;
    if (at_barrier_ == live_) {  // every live thread has reached __syncthreads
      for (Fiber& f : fibers_)
        if (f.state == State::kAtBarrier) f.state = State::kReady;
      at_barrier_ = 0;
      if (grid.order == Config::Order::kShuffled) reorder();
      continue;
    }
    fault_ = "cuda emulation: deadlock in kernel " + std::string(grid.kernel) + ", block " +
             dims(block_idx) + ": " + describe_deadlock();
  }
  if (fault_.empty()) {
    for (size_t i = shared_used_; i < shared_used_ + kSharedRedzone; ++i) {
      if (shared_[i] != kPoison) {
        fault_ = "cuda emulation: kernel " + std::string(grid.kernel) + " wrote " + std::to_string(i - shared_used_) +
                 " bytes past the end of its " + std::to_string(shared_used_) + " bytes of shared memory";
        break;
      }
    }
  }
  shared_dirty_ = std::min(shared_.size(), shared_used_ + kSharedRedzone);
  if (!grid.stack_measured.exchange(true)) {
    size_t depth = 0;
    for (unsigned i = 0; i < grid.threads; ++i) depth = std::max(depth, stacks_[i]->used_depth(kFirstStackPoison));
    grid.stack_poison.store(std::min(kFirstStackPoison, depth + 1024), std::memory_order_relaxed);
  }
  if (!fault_.empty()) {
    report_fault(fault_);
    return false;
  }
  return true;
}

std::string Worker::describe_deadlock() const {
  std::ostringstream out;
  int barrier = 0, warp_ops = 0, exited = 0;
  const Fiber* first_warp = nullptr;
  for (const Fiber& f : fibers_) {
    if (f.state == State::kAtBarrier) ++barrier;
    if (f.state == State::kExited) ++exited;
    if (f.state == State::kAtWarpOp) {
      ++warp_ops;
      if (!first_warp) first_warp = &f;
    }
  }
  out << barrier << " threads wait at __syncthreads, " << warp_ops << " at warp operations, " << exited
      << " have exited";
  if (first_warp) {
    out << "; e.g. thread " << first_warp->linear << " (warp " << first_warp->warp << ", lane " << first_warp->lane
        << ") waits in " << op_name(first_warp->post.op) << " with mask " << hex(first_warp->post.mask)
        << " for lanes that never get there";
  }
  if (barrier > 0) out << "; a __syncthreads that not every live thread of the block reaches";
  return out.str();
}

void Worker::syncthreads() {
  current_->state = State::kAtBarrier;
  ++at_barrier_;
  yield();
}

void Worker::finish_current() {
  Fiber& f = *current_;
  f.state = State::kExited;
  --live_;
  exited_[f.warp] |= 1u << f.lane;
  const int base = f.warp * kWarpSize;
  for (unsigned waiting = posted_[f.warp]; waiting != 0; waiting &= waiting - 1) {
    const int lane = __builtin_ctz(waiting);
    const WarpPost& post = fibers_[base + lane].post;
    if (post.mask >> f.lane & 1u) {
      fail("thread exited while lane " + std::to_string(lane) + " waits for it in " + op_name(post.op) + " with mask " +
           hex(post.mask));
    }
  }
  yield();
  __builtin_unreachable();
}

uint64_t Worker::warp_exchange(WarpOp op, unsigned mask, uint64_t value, int arg, int width) {
  Fiber& self = *current_;
  const unsigned bit = 1u << self.lane;
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) {
    fail(std::string(op_name(op)) + " with width " + std::to_string(width) + ": it must be a power of 2 up to 32");
  }
  if (!(mask & bit)) {
    fail(std::string(op_name(op)) + " with mask " + hex(mask) + ", which does not include the calling lane " +
         std::to_string(self.lane));
  }
  const int lanes = std::min<int>(kWarpSize, static_cast<int>(fibers_.size()) - self.warp * kWarpSize);
  const unsigned existing = lanes == kWarpSize ? 0xffffffffu : (1u << lanes) - 1u;
  if (mask & ~existing) {
    fail(std::string(op_name(op)) + " with mask " + hex(mask) + " names lanes that do not exist: the block has " +
         std::to_string(fibers_.size()) + " threads, so warp " + std::to_string(self.warp) + " has " +
         std::to_string(lanes) + " lanes");
  }
  if (mask & exited_[self.warp]) {
    fail(std::string(op_name(op)) + " with mask " + hex(mask) + " names lane " +
         std::to_string(__builtin_ctz(mask & exited_[self.warp])) + ", which has exited");
  }
  self.post = WarpPost{op, mask, value, arg, width, 0};
  self.state = State::kAtWarpOp;
  posted_[self.warp] |= bit;
  if ((posted_[self.warp] & mask) == mask) {
    complete_warp_op(self.warp, self.post);
  } else {
    yield();
  }
  return self.post.result;
}

// Every lane of the mask has posted: check they posted the same operation, compute each lane's
// result and wake them all.
void Worker::complete_warp_op(int warp, const WarpPost& post) {
  const int base = warp * kWarpSize;
  uint64_t results[kWarpSize] = {};
  unsigned ballot = 0;
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if (!(post.mask >> lane & 1u)) continue;
    const WarpPost& other = fibers_[base + lane].post;
    if (other.op != post.op || other.mask != post.mask) {
      fail(std::string(op_name(post.op)) + " with mask " + hex(post.mask) + " meets lane " + std::to_string(lane) +
           " in " + op_name(other.op) + " with mask " + hex(other.mask) +
           ": the lanes of a mask must reach the same operation");
    }
    if (other.value != 0) ballot |= 1u << lane;
  }
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if (!(post.mask >> lane & 1u)) continue;
    const WarpPost& mine = fibers_[base + lane].post;
    const int segment = lane & ~(mine.width - 1);
    int source = lane;
    switch (post.op) {
      case WarpOp::kSyncWarp: continue;
      case WarpOp::kBallot: results[lane] = ballot; continue;
      case WarpOp::kShflIdx: source = segment + (mine.arg & (mine.width - 1)); break;
      case WarpOp::kShflUp: source = lane - mine.arg >= segment ? lane - mine.arg : lane; break;
      case WarpOp::kShflDown: source = lane + mine.arg < segment + mine.width ? lane + mine.arg : lane; break;
      case WarpOp::kShflXor: {
        const int x = lane ^ mine.arg;
        source = x < segment + mine.width ? x : lane;
        break;
      }
    }
    if (!(post.mask >> source & 1u)) {
      fail(std::string(op_name(post.op)) + " on lane " + std::to_string(lane) + " of warp " + std::to_string(warp) +
           " reads lane " + std::to_string(source) + ", which is not in the mask " + hex(post.mask) +
           " (its value is undefined)");
    }
    results[lane] = fibers_[base + source].post.value;
  }
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if (!(post.mask >> lane & 1u)) continue;
    Fiber& f = fibers_[base + lane];
    f.post.result = results[lane];
    f.state = State::kReady;
  }
  posted_[warp] &= ~post.mask;
}

void* Worker::shared_variable(const void* site, size_t bytes, size_t alignment, const char* name) {
  for (const SharedSlot& slot : slots_)
    if (slot.site == site) return shared_.data() + slot.offset;
  const size_t align = std::max<size_t>(alignment, 16);
  const size_t offset = (shared_used_ + align - 1) / align * align;
  if (offset + bytes > kStaticSharedLimit) {
    fail("__shared__ " + std::string(name) + " needs " + std::to_string(bytes) + " bytes at offset " +
         std::to_string(offset) + ": more than CUDA's 48 KiB of static shared memory per block");
  }
  slots_.push_back({site, offset});
  shared_used_ = offset + bytes;
  return shared_.data() + offset;
}

// ---------------------------------------------------------------- the grid

std::mutex workers_mutex;
std::vector<std::unique_ptr<Worker>> workers;

std::string check_configuration(dim3 grid, dim3 block, const Device& device) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0) return "block " + dims(block) + " has no threads";
  if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > kMaxThreadsPerBlock)
    return "block " + dims(block) + " has " + std::to_string(threads) + " threads: at most 1024 (x, y <= 1024, z <= 64)";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return "grid " + dims(grid) + " has no blocks";
  if (grid.x > kMaxGridX || grid.y > device.max_grid_y || grid.z > device.max_grid_z)
    return "grid " + dims(grid) + " exceeds the device's limits: x <= 2^31 - 1, y <= " +
           std::to_string(device.max_grid_y) + ", z <= " + std::to_string(device.max_grid_z);
  if (uint64_t(grid.x) * grid.y * grid.z > (uint64_t(1) << 28))
    return "grid " + dims(grid) + " has more blocks than the emulation runs (2^28)";
  return {};
}

void run_blocks(Grid& grid, Worker& worker) {
  this_worker = &worker;
  for (size_t k; !grid.failed.load(std::memory_order_relaxed) && (k = grid.next.fetch_add(1)) < grid.block_order.size();) {
    if (!worker.run_block(grid, grid.block_order[k])) grid.failed = true;
  }
  this_worker = nullptr;
}

void after_launch(const char* what) {
  for (auto check : after_launch_checks) check(what);
}

// Runs the after-launch checks of a memset or memcpy and returns its result.
cudaError_t checked_copy(const char* what) {
  LaunchFaults copy_faults;
  active_launch = &copy_faults;
  after_launch(what);
  active_launch = nullptr;
  if (copy_faults.first.empty()) return cudaSuccess;
  set_error(cudaErrorLaunchFailure, "unspecified launch failure (" + copy_faults.first + ")");
  return cudaErrorLaunchFailure;
}

}  // namespace

void syncthreads() { this_worker->syncthreads(); }

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int arg, int width) {
  return this_worker->warp_exchange(op, mask, value, arg, width);
}

void* shared_variable(const void* site, size_t bytes, size_t alignment, const char* name) {
  return this_worker->shared_variable(site, bytes, alignment, name);
}

cudaStream_t current_stream() {
  static int handle;  // any distinct non-null address: the legacy default stream is nullptr
  return reinterpret_cast<cudaStream_t>(&handle);
}

void report_fault(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(log_mutex);
    faults.push_back(message);
  }
  if (active_launch) active_launch->add(message);
}

void add_after_launch_check(void (*check)(const char*)) { after_launch_checks.push_back(check); }

void run_grid(const char* kernel, dim3 grid_dim, dim3 block_dim, cudaStream_t stream,
              void (*body)(const void*), const void* args) {
  {
    std::lock_guard<std::mutex> lock(log_mutex);
    launch_log.push_back(std::string(kernel) + "|" + std::to_string(grid_dim.x) + "," + std::to_string(grid_dim.y) + "," +
                         std::to_string(grid_dim.z) + "|" + std::to_string(block_dim.x) + "," +
                         std::to_string(block_dim.y) + "," + std::to_string(block_dim.z));
  }
  Config settings;
  {
    std::lock_guard<std::mutex> config_lock(config_mutex);
    settings = config;
  }
  const std::string invalid = check_configuration(grid_dim, block_dim, kDevices[settings.device]);
  if (!invalid.empty()) {
    set_error(cudaErrorInvalidConfiguration,
              "invalid configuration argument (cuda emulation: " + invalid + ", in the launch of " + kernel + ")");
    return;
  }
  if (stream != current_stream()) {
    set_error(cudaErrorInvalidResourceHandle, std::string("cuda emulation: ") + kernel +
                                                  " was launched on a stream that is not the current stream");
    return;
  }
  static std::atomic<uint64_t> launches{0};
  const uint64_t launch_number = launches++;
  Grid grid;
  grid.kernel = kernel;
  grid.order = settings.order;
  grid.grid = grid_dim;
  grid.block = block_dim;
  grid.threads = block_dim.x * block_dim.y * block_dim.z;
  grid.body = body;
  grid.args = args;
  grid.block_order.resize(size_t(grid_dim.x) * grid_dim.y * grid_dim.z);
  std::lock_guard<std::mutex> lock(workers_mutex);
  std::iota(grid.block_order.begin(), grid.block_order.end(), 0u);
  if (settings.order == Config::Order::kReverse) std::reverse(grid.block_order.begin(), grid.block_order.end());
  if (settings.order == Config::Order::kShuffled) {
    std::mt19937_64 rng(settings.seed * 1000003u + launch_number);
    std::shuffle(grid.block_order.begin(), grid.block_order.end(), rng);
  }
  const size_t count = std::min<size_t>(std::max(settings.workers, 1), grid.block_order.size());
  while (workers.size() < count) workers.push_back(std::make_unique<Worker>());
  for (size_t w = 0; w < count; ++w) workers[w]->reseed(settings.seed * 1000003u + launch_number * 64 + w);
  LaunchFaults launch_faults;
  active_launch = &launch_faults;
  std::vector<std::thread> threads;
  for (size_t w = 1; w < count; ++w) threads.emplace_back(run_blocks, std::ref(grid), std::ref(*workers[w]));
  run_blocks(grid, *workers[0]);
  for (std::thread& t : threads) t.join();
  after_launch(kernel);
  active_launch = nullptr;
  if (!launch_faults.first.empty()) set_error(cudaErrorLaunchFailure, "unspecified launch failure (" + launch_faults.first + ")");
}

}  // namespace cuda_emulation

// ---------------------------------------------------------------- the CUDA runtime API

using cuda_emulation::current_stream;

cudaError_t cudaGetLastError(void) {
  const cudaError_t error = cuda_emulation::last_error;
  cuda_emulation::last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError(void) { return cuda_emulation::last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
  }
}

// The last error's message with the emulation's details, which name the kernel and the rule.
const char* cudaGetErrorString(cudaError_t error) {
  if (error == cudaSuccess) return "no error";
  if (!cuda_emulation::last_error_detail.empty()) return cuda_emulation::last_error_detail.c_str();
  return cudaGetErrorName(error);
}

cudaError_t cudaGetDevice(int* device) {
  std::lock_guard<std::mutex> lock(cuda_emulation::config_mutex);
  *device = cuda_emulation::config.device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= cuda_emulation::kDeviceCount) return cuda_emulation::last_error = cudaErrorInvalidDevice;
  const cuda_emulation::Device& emulated = cuda_emulation::kDevices[device];
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = emulated.sm_count; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; return cudaSuccess;
    case cudaDevAttrMaxGridDimY: *value = static_cast<int>(emulated.max_grid_y); return cudaSuccess;
    case cudaDevAttrMaxGridDimZ: *value = static_cast<int>(emulated.max_grid_z); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    default:
      cuda_emulation::set_error(cudaErrorInvalidValue, "cuda emulation: cudaDeviceGetAttribute(" +
                                                           std::to_string(int(attr)) + ") is not emulated");
      return cudaErrorInvalidValue;
  }
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t count, cudaStream_t stream) {
  if (stream != current_stream()) {
    cuda_emulation::set_error(cudaErrorInvalidResourceHandle,
                              "cuda emulation: cudaMemsetAsync on a stream that is not the current stream");
    return cudaErrorInvalidResourceHandle;
  }
  std::memset(pointer, value, count);
  return cuda_emulation::checked_copy("cudaMemsetAsync");
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind, cudaStream_t stream) {
  if (stream != current_stream()) {
    cuda_emulation::set_error(cudaErrorInvalidResourceHandle,
                              "cuda emulation: cudaMemcpyAsync on a stream that is not the current stream");
    return cudaErrorInvalidResourceHandle;
  }
  std::memmove(dst, src, count);
  return cuda_emulation::checked_copy("cudaMemcpyAsync");
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

// ---------------------------------------------------------------- the Python driver

extern "C" {

int cuda_emulation_configure(const char* schedule, int workers, unsigned long long seed, int device) {
  using Order = cuda_emulation::Config::Order;
  const std::string name = schedule;
  Order order;
  if (name == "forward") order = Order::kForward;
  else if (name == "reverse") order = Order::kReverse;
  else if (name == "shuffled") order = Order::kShuffled;
  else return -1;
  if (device < 0 || device >= cuda_emulation::kDeviceCount) return -1;
  std::lock_guard<std::mutex> lock(cuda_emulation::config_mutex);
  cuda_emulation::config.order = order;
  cuda_emulation::config.workers = workers < 1 ? 1 : workers;
  cuda_emulation::config.seed = seed;
  cuda_emulation::config.device = device;
  return 0;
}

void* cuda_emulation_current_stream() { return cuda_emulation::current_stream(); }

const char* cuda_emulation_faults() {
  std::lock_guard<std::mutex> lock(cuda_emulation::log_mutex);
  cuda_emulation::faults_text.clear();
  for (const auto& fault : cuda_emulation::faults) cuda_emulation::faults_text += fault + "\n";
  return cuda_emulation::faults_text.c_str();
}

void cuda_emulation_clear_faults() {
  std::lock_guard<std::mutex> lock(cuda_emulation::log_mutex);
  cuda_emulation::faults.clear();
}

const char* cuda_emulation_launch_log() {
  std::lock_guard<std::mutex> lock(cuda_emulation::log_mutex);
  cuda_emulation::launch_log_text.clear();
  for (const auto& line : cuda_emulation::launch_log) cuda_emulation::launch_log_text += line + "\n";
  return cuda_emulation::launch_log_text.c_str();
}

void cuda_emulation_clear_launch_log() {
  std::lock_guard<std::mutex> lock(cuda_emulation::log_mutex);
  cuda_emulation::launch_log.clear();
}

}  // extern "C"
