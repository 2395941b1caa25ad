#!/usr/bin/env bash
# The CPU benchmark suite at every instruction-set level this processor has, with torch's own
# kernels held to the same level (scripts/at_cpu_isa.py), so each JSON shows what a processor of
# that level gets. Writes benchmarks/results/cpu/<name>-<level>.json and .log for each level,
# then regenerates the README's table from every committed result.
#
# Usage: scripts/cpu_benchmarks.sh [NAME] [LEVEL...]   (NAME defaults to cpu-<cores>core)
# Run it on a quiet machine: another busy process slows torch's OpenMP loops several times.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-cpu-$(nproc)core}
shift || true
levels=("$@")
if [ "${#levels[@]}" -eq 0 ]; then
  read -r -a levels <<< "$(python -c 'from ddpm_fast import ops; print(*reversed(ops.supported_cpu_isas()))')"
fi
mkdir -p benchmarks/results/cpu
for level in "${levels[@]}"; do
  out=benchmarks/results/cpu/$name-$level
  echo "== $level -> $out.json"
  python scripts/at_cpu_isa.py "$level" -- python -m pytest benchmarks --benchmark-only -q \
    --benchmark-json="$out.json" 2>&1 | tee "$out.log"
done
python benchmarks/report.py --readme docs/performance.md benchmarks/results/*/*.json
