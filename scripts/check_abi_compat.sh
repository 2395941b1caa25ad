#!/usr/bin/env bash
# One build, two torches: builds a wheel of ddpm_fast once against BUILD_TORCH (2.13.0, CPU),
# installs that same wheel next to RUN_TORCH (2.14.1, a CUDA build) in a fresh virtual
# environment, and runs the op tests there. It passes only if the stable-ABI libraries load and
# compute in a torch they were not built against (tests/test_stable_abi.py also checks that they
# import no torch C++ symbol).
#
# Heavy (RUN_TORCH with its CUDA packages is several GB; pip takes them from its local index or
# cache when it has them), so not part of CI. Usage: scripts/check_abi_compat.sh [WORK_DIR]
# (default: a temporary directory, removed afterwards). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build_torch=${BUILD_TORCH:-2.13.0}
run_torch=${RUN_TORCH:-2.14.1}
python=${PYTHON:-python3}

if [ $# -ge 1 ]; then
  work=$1
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
start=$SECONDS

echo "== building the wheel against torch $build_torch"
"$python" -m venv "$work/build-env"
"$work/build-env/bin/pip" install -q "torch==$build_torch" setuptools wheel ninja
# From a copy of the source files (tracked, or untracked and not ignored): no build/ directory or
# library of the working tree takes part.
rm -rf "$work/src" "$work/wheels"
mkdir -p "$work/src"
git -C "$root" ls-files -z --cached --others --exclude-standard | (cd "$root" && xargs -0 tar -cf - 2>/dev/null) |
  tar -C "$work/src" -xf -
"$work/build-env/bin/pip" wheel -q --no-build-isolation --no-deps -w "$work/wheels" "$work/src"
wheel=$(ls "$work"/wheels/ddpm_fast-*.whl)
echo "built $(basename "$wheel") in $((SECONDS - start)) s"

echo "== installing it next to torch $run_torch"
"$python" -m venv "$work/run-env"
"$work/run-env/bin/pip" install -q "torch==$run_torch" "$wheel" pytest
# From the work directory from here on, so that the installed wheel is imported, not the source tree.
cd "$work"
"$work/run-env/bin/python" - "$build_torch" "$work/run-env" <<'EOF'
import sys
import torch
import ddpm_fast
from ddpm_fast import ops
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), ddpm_fast from {ddpm_fast.__file__}")
assert ddpm_fast.__file__.startswith(sys.argv[2]), "not the installed wheel"
assert ops.compiled_ops_loaded(), ops.load_error()
assert not torch.__version__.startswith(sys.argv[1]), "the run environment has the build's torch"
EOF

echo "== the op tests under torch $run_torch"
"$work/run-env/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$root" \
  "$root/tests/test_ops.py" "$root/tests/test_stable_abi.py"
echo "check_abi_compat: the wheel built against torch $build_torch passes the op tests under torch $run_torch ($((SECONDS - start)) s)"
