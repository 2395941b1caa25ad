#!/usr/bin/env bash
# Compile-only check of the CUDA backend on a machine without a GPU (CI calls it when nvcc is on
# the PATH): every csrc/**/*.cu for sm_80 and sm_90, and the CUDA binding against the installed
# torch's headers. The .cu files include CUDA headers only (csrc/cuda/launchers.h), which is what
# lets them compile next to a CPU-only torch.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v nvcc >/dev/null || { echo "check_cuda_compile: nvcc not found on the PATH" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mapfile -t sources < <(find csrc -name '*.cu' | sort)
if [ "${#sources[@]}" -eq 0 ]; then
  echo "check_cuda_compile: no .cu files under csrc/" >&2
  exit 1
fi
for source in "${sources[@]}"; do
  for arch in 80 90; do
    echo "nvcc sm_${arch} ${source}"
    nvcc -std=c++20 -O3 -gencode "arch=compute_${arch},code=sm_${arch}" -c "$source" -o "$work/out.o"
  done
done

# The binding is plain C++ against torch's stable ABI (no ATen/cuda header), so g++ checks it here
# too, for the torch version the build targets.
target=$(sed -n 's/^TORCH_TARGET_VERSION = "\(.*\)"$/\1/p' tools/cuda_build.py)
includes=$(python -c "
import sysconfig
from torch.utils.cpp_extension import include_paths
print(' '.join('-I' + p for p in include_paths() + [sysconfig.get_paths()['include']]))")
for binding in csrc/cuda/*.cpp; do
  echo "g++ -fsyntax-only ${binding}"
  # shellcheck disable=SC2086
  g++ -std=c++20 -fsyntax-only -DTORCH_TARGET_VERSION="$target" $includes "$binding"
done
echo "check_cuda_compile: all CUDA sources compile"
