// The interface between the torch binding (bindings.cpp, compiled by the C++ compiler) and the
// CUDA kernels (*.cu, compiled by nvcc). It holds plain structs and function declarations only,
// so the .cu files include no torch header and compile with nvcc alone: torch's ATen/cuda headers
// do not compile against a CPU-only torch, and CI (which has no GPU) compiles the .cu files next
// to one. Every launcher enqueues its kernels on `stream` and returns nullptr on success, or the
// CUDA error string of the launch.
#pragma once
#include <cstdint>

namespace ddpm_fast {
namespace cuda {

// Element types the kernels are instantiated for; arithmetic is in fp32 for the two 16-bit
// types (fp64 for fp64).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// q_sample, DDPM's forward noising. For element i of sample b and s = t[b]:
//   out[i] = sqrt_alphas_cumprod[s] * x_start[i] + sqrt_one_minus_alphas_cumprod[s] * noise[i]
struct QSampleParams {
  const void* x_start;  // (B, per_sample) in `dtype`, sample b at b * per_sample (NCHW or NHWC)
  const void* noise;    // same layout as x_start
  void* out;            // same layout as x_start
  const int64_t* t;     // (B,) timesteps; an out-of-range t yields NaN samples (no host sync)
  const void* sqrt_alphas_cumprod;            // (T,) in the accumulation type: fp64 for fp64, else fp32
  const void* sqrt_one_minus_alphas_cumprod;  // (T,) likewise
  int64_t batch;        // B
  int64_t per_sample;   // elements of one sample
  int64_t timesteps;    // T
  DType dtype;          // element type of x_start, noise and out
};

const char* launch_q_sample(const QSampleParams& p, void* stream);

// GroupNorm + scale/shift + activation. Shapes (N, C, H, W); channels_last when nhwc.
struct GroupNormActParams {
  const void* x;        // input, (N, C, HW) or (N, HW, C) when nhwc
  void* y;              // output, same layout as x (forward)
  const void* weight;   // (C,) or nullptr (= 1)
  const void* bias;     // (C,) or nullptr (= 0)
  const void* scale;    // (N, C) or nullptr (= 0: multiply by 1)
  const void* shift;    // (N, C) or nullptr (= 0)
  void* mean;           // (N, G) statistics, fp32 (fp64 for fp64 input); written by forward
  void* rstd;           // (N, G)
  void* partials;       // workspace of the split reduction: 2 * N * G * splits accumulators
  int64_t N, C, HW, G;
  int64_t splits;       // group_norm_splits(N * G, C / G * HW): blocks per (n, g) (forward)
  double eps;
  int act;              // 0 none, 1 silu, 2 gelu (matches Act in checks.h)
  bool nhwc;
  DType dtype;
  // backward only
  const void* grad_y;   // (N, C, HW) / (N, HW, C), same layout as x
  void* grad_x;         // same layout as x
  void* sum_du;         // (N, C) accumulators, zeroed by the launcher
  void* sum_du_xhat;    // (N, C) accumulators, zeroed by the launcher
  void* group_m;        // (N, G, 2) workspace: the two group means of the dx formula
};

// Slices per row for a split reduction of `rows` rows of `elements` each: about 4 blocks per SM
// in all, each with at least a block's worth of elements, so batch-1 sampling (N * G = 1)
// still fills the GPU. The forward's partials workspace holds 2 * rows * splits accumulators.
int64_t group_norm_splits(int64_t rows, int64_t elements);

const char* launch_group_norm_act_forward(const GroupNormActParams& p, void* stream);
const char* launch_group_norm_act_backward(const GroupNormActParams& p, void* stream);

// Linear attention core on NCHW qkv (B, 3 * heads * d, n) with n = H * W.
struct LinearAttentionParams {
  const void* qkv;      // (B, 3, heads, d, n) contiguous
  void* out;            // (B, heads, d, n) forward output
  const void* grad_out; // (B, heads, d, n) backward input
  void* grad_qkv;       // (B, 3, heads, d, n) backward output
  void* k_stats;        // workspace (B * heads * d, 2) fp32 (fp64): max and sum of exp of k rows
  void* ctx;            // workspace (B * heads, d, d) accumulators: k @ v^T (unscaled)
  void* dctx;           // workspace (B * heads, d, d) accumulators: Sq @ grad_out^T (backward)
  int64_t B, heads, d, n;
  double scale;
  DType dtype;
};

// Largest dim_head the kernels hold in registers and shared memory: 64, or 32 in fp64. Larger
// heads run the reference (ddpm_fast/ops/attention.py routes them there).
inline int64_t max_head_dim(DType dtype) { return dtype == DType::kFloat64 ? 32 : 64; }

const char* launch_linear_attention_forward(const LinearAttentionParams& p, void* stream);
const char* launch_linear_attention_backward(const LinearAttentionParams& p, void* stream);

// One step of any sampler (sampler_update; DDPM, DDIM, DPM-Solver++, SDE-DPM-Solver++). For
// element i of sample b, m the model output, s = step[b] and its coefficient row c = coefs + 7 * s:
//   x0[i]  = clamp(c[5] * x[i] + c[6] * m[i])   (clip_sample_range > 0, or scales: thresholding)
//   out[i] = c[0] * x[i] + c[1] * m[i] + c[2] * x0[i] + c[3] * prev_x0[i] + c[4] * noise[i]
struct SamplerUpdateParams {
  const void* x;             // (B, per_sample) in `dtype`, sample b at b * per_sample (NCHW or NHWC)
  const void* model_output;  // same layout as x: the model's prediction (eps, x0 or v)
  const void* prev_x0;       // same layout as x, or nullptr (term dropped): the previous step's x0
  const void* noise;         // same layout as x, or nullptr (term dropped): fresh Gaussian noise
  void* out;                 // same layout as x: the next sample
  void* x0;                  // same layout as x: this step's (clipped) prediction of the clean sample
  const int64_t* step;       // (B,) row of coefs per sample; an out-of-range row yields NaN (no host sync)
  const void* coefs;         // (steps, 7) row-major, in the accumulation type: fp64 for fp64, else fp32
  void* scales;              // (B,) in the accumulation type when thresholding (written, then read), else nullptr
  int64_t batch;             // B
  int64_t per_sample;        // elements of one sample
  int64_t steps;             // rows of coefs
  double clip_sample_range;  // > 0: x0 clamped to [-range, range]; 0: not clipped
  double dynamic_thresholding_ratio;  // the quantile of |x0| that thresholding takes (with scales)
  double sample_max_value;   // the largest threshold scale
  DType dtype;               // element type of x, model_output, prev_x0, noise, out and x0
};

const char* launch_sampler_update(const SamplerUpdateParams& p, void* stream);

}  // namespace cuda
}  // namespace ddpm_fast
