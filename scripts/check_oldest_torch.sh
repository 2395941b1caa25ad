#!/usr/bin/env bash
# Compiles every C++ source (the CPU ops, the module, the CUDA binding) against the headers of
# the OLDEST torch the build claims to support: the TORCH_TARGET_VERSION of tools/cuda_build.py
# (2.10). A newer torch's headers hide nothing the sources use: torch 2.13's define
# STABLE_TORCH_ERROR_CODE_CHECK for every target version, torch 2.11's not at all, and so the
# build broke against torch 2.11 (the GPU machine's torch) while it passed here. Syntax only, no
# link: the ABI itself is checked by scripts/check_abi_compat.sh and tests/test_stable_abi.py.
#
# Heavy (pip fetches that torch's wheel, about 0.9 GB, unless TORCH_WHEEL names one on disk; only
# its headers are unpacked), so not part of CI. Usage: scripts/check_oldest_torch.sh [WORK_DIR]
# (default: a temporary directory, removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(sed -n 's/^TORCH_TARGET_VERSION = "\(.*\)"$/\1/p' tools/cuda_build.py)
version=$(python -c "v = int('$target', 16); print(f'{v >> 56}.{(v >> 48) & 0xff}.0')")

if [ $# -ge 1 ]; then
  work=$1
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi

wheel=${TORCH_WHEEL:-}
if [ -z "$wheel" ]; then
  echo "== fetching torch $version (its headers only are used)"
  python -m pip download -q --no-deps -d "$work/wheel" "torch==$version"
  wheel=$(ls "$work"/wheel/torch-"$version"*.whl)
fi
case "$(basename "$wheel")" in
  "torch-$version"*) ;;
  *) echo "check_oldest_torch: $wheel is not a torch $version wheel" >&2; exit 1 ;;
esac
rm -rf "$work/headers"
unzip -q "$wheel" 'torch/include/*' -d "$work/headers"
include=$work/headers/torch/include
python_include=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")

# The flags of setup.py's CXX_FLAGS that matter to the front end.
failed=0
for source in csrc/module.cpp csrc/cpu/*.cpp csrc/cuda/*.cpp; do
  echo "g++ -fsyntax-only (torch $version headers) $source"
  g++ -std=c++20 -fsyntax-only -fopenmp-simd -DTORCH_TARGET_VERSION="$target" -DPy_LIMITED_API=0x030a0000 \
    -I"$include" -I"$include/torch/csrc/api/include" -I"$python_include" "$source" || failed=1
done
if [ "$failed" -ne 0 ]; then
  echo "check_oldest_torch: some sources do not compile against torch $version, the oldest supported" >&2
  exit 1
fi
echo "check_oldest_torch: every C++ source compiles against torch $version's headers"
