"""Registers, spills and shared memory of every CUDA kernel, from ptxas' -v output.

    python scripts/ptxas_report.py build.log          # a log of a build with -Xptxas=-v
    nvcc ... -Xptxas -v -c kernel.cu 2>&1 | python scripts/ptxas_report.py -

Prints one markdown row per kernel and architecture, the heaviest first, with the kernel's
demangled name (via c++filt when it is installed).
"""

import argparse
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse(lines):
    """Yields dicts (name, arch, registers, stack, spill_stores, spill_loads, smem) per kernel."""
    kernel = None
    for line in lines:
        if match := ENTRY.search(line):
            kernel = {"name": match.group(1), "arch": match.group(2), "stack": 0, "spill_stores": 0,
                      "spill_loads": 0, "registers": 0, "smem": 0}
        elif kernel and (match := SPILLS.search(line)):
            kernel["stack"], kernel["spill_stores"], kernel["spill_loads"] = map(int, match.groups())
        elif kernel and (match := USAGE.search(line)):
            kernel["registers"] = int(match.group(1))
            kernel["smem"] = int(match.group(2) or 0)
            yield kernel
            kernel = None


def demangle(names):
    if not names or shutil.which("c++filt") is None:
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines() if len(out.splitlines()) == len(names) else names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="ptxas -v output, or - for standard input")
    args = parser.parse_args()
    text = sys.stdin.read() if args.log == "-" else open(args.log, errors="replace").read()
    kernels = list({(k["name"], k["arch"]): k for k in parse(text.splitlines())}.values())
    if not kernels:
        sys.exit("ptxas_report: no 'Compiling entry function' lines: was the build run with -Xptxas=-v?")
    for kernel, name in zip(kernels, demangle([k["name"] for k in kernels])):
        kernel["name"] = name.replace("(anonymous namespace)::", "").replace("ddpm_fast::cuda::", "")
    kernels.sort(key=lambda k: (-k["spill_stores"] - k["spill_loads"], -k["registers"]))
    print("| kernel | arch | registers | spill stores (B) | spill loads (B) | stack (B) | static smem (B) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for k in kernels:
        print(f"| `{k['name']}` | {k['arch']} | {k['registers']} | {k['spill_stores']} | {k['spill_loads']} "
              f"| {k['stack']} | {k['smem']} |")


if __name__ == "__main__":
    main()
