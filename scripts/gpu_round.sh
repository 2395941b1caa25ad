#!/usr/bin/env bash
# The whole GPU round, in one command, on any machine with a CUDA GPU (nothing is downloaded):
#   1. build the extension for the visible GPU, printing ptxas' registers and spills, and stop
#      unless ddpm_fast.compiled_backends() includes 'cuda';
#   2. pytest tests;
#   3. compute-sanitizer memcheck, racecheck, initcheck and synccheck over the CUDA op tests;
#   4. the ptxas report (registers, spills, shared memory per kernel) from the build log;
#   5. the benchmark suite, with its JSON;
#   6. the training throughput in fp32/bf16/fp16, reference against fused, when the script exists.
# Everything goes under OUT_DIR; summary.txt lists each step's result. Exits non-zero when a
# step failed. Each step has a time limit (seconds, overridable) so the round always finishes.
#
# Usage: scripts/gpu_round.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_round.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: > "$summary"
failed=0

# step NAME LIMIT COMMAND...: runs COMMAND with its output in NAME.log, under LIMIT seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local result="ok"
  if [ "$rc" -eq 124 ]; then result="TIMED OUT after ${limit}s"; failed=1
  elif [ "$rc" -ne 0 ]; then result="FAILED (exit $rc)"; failed=1; fi
  echo "$name: $result, $((SECONDS - start)) s (see $name.log)" | tee -a "$summary"
  return "$rc"
}

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || { echo "gpu_round: nvidia-smi failed: no GPU?" | tee -a "$summary"; exit 1; }
capability=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || exit 1
device=$(python -c "import torch; print(torch.cuda.get_device_name().lower().replace(' ', '-'))")
echo "device $device, compute capability $capability, torch $(python -c 'import torch; print(torch.__version__)')" | tee -a "$summary"

# 1. Build for this GPU only; ptxas -v reports every kernel's resources into the build log.
step build "${GPU_ROUND_BUILD_LIMIT:-420}" env TORCH_CUDA_ARCH_LIST="$capability" MAX_JOBS="${MAX_JOBS:-16}" \
  DDPM_FAST_REQUIRE_CUDA=1 NVCC_APPEND_FLAGS="-Xptxas=-v" python -m pip install -v --no-build-isolation --no-deps -e .
if ! python -c "import ddpm_fast, sys; sys.exit('cuda' not in ddpm_fast.compiled_backends())"; then
  echo "gpu_round: the build has no CUDA kernels (compiled_backends() lacks 'cuda'): see build.log" | tee -a "$summary"
  exit 1
fi

# 4 first, while the build log is fresh: it costs nothing.
python scripts/ptxas_report.py "$out/build.log" > "$out/ptxas.txt" 2>&1 && echo "ptxas: ok (ptxas.txt)" | tee -a "$summary"

# 2. The whole test suite (the CPU tests, the emulated CUDA tests and tests/test_cuda.py).
# shellcheck disable=SC2086  # GPU_ROUND_TESTS is a list of pytest arguments
step tests "${GPU_ROUND_TESTS_LIMIT:-600}" python -m pytest ${GPU_ROUND_TESTS:-tests} -q -rs --junitxml="$out/tests.xml"

# 3. compute-sanitizer over the op parity tests of tests/test_cuda.py (not the whole-model ones).
# Torch's caching allocator would hide out-of-bounds accesses inside its blocks: it is off here.
ops_tests="group_norm or linear_attention or elementwise or sampler_update or opcheck"
for tool in ${GPU_ROUND_SANITIZERS:-memcheck racecheck initcheck synccheck}; do
  step "sanitizer-$tool" "${GPU_ROUND_SANITIZER_LIMIT:-300}" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 50 \
    python -m pytest tests/test_cuda.py -q -x -p no:cacheprovider -k "$ops_tests"
done

# 5. Benchmarks, JSON named after the device.
step benchmarks "${GPU_ROUND_BENCH_LIMIT:-900}" python -m pytest benchmarks --benchmark-only -rs \
  -k "${GPU_ROUND_BENCH_SELECT:-}" --benchmark-json="$out/$device.json"

# 6. Training throughput, once the training script of issue 12 is in.
if [ -f scripts/train_throughput.py ]; then
  step train-throughput "${GPU_ROUND_TRAIN_LIMIT:-300}" python scripts/train_throughput.py --device cuda \
    --out "$out/train-throughput.json"
fi

echo "gpu_round: results in $out" | tee -a "$summary"
exit "$failed"
