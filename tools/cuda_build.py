"""Where the CUDA toolkit is, and what ddpm_fast builds for and against: used by setup.py (which loads this
file by path, before the package is installed) and by the CUDA emulation of the tests.
Standard library only.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

# Architectures built when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible. "+PTX" also
# embeds sm_90's PTX, which newer GPUs compile at load time; without it they find "no kernel
# image is available for execution on the device".
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
# The oldest torch whose stable ABI the compiled libraries use, 2.10.0, encoded as torch's
# TORCH_ABI_VERSION is (major << 56 | minor << 48): passed as -DTORCH_TARGET_VERSION, it hides the
# stable API of newer torch releases, so a library built against any torch >= 2.10 loads in 2.10.
TORCH_TARGET_VERSION = "0x020a000000000000"


def _toolkit_of(nvcc):
    """The root of the toolkit that `nvcc` really runs: nvcc reports its own bin directory in a
    dry run, which sees through wrapper scripts and symlinks."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-E", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return str(Path(match.group(1).strip()).parent) if match else None


def find_cuda_toolkit(environ=None):
    """The CUDA toolkit root to build with, or None: CUDA_HOME (or CUDA_PATH) when set, else the
    toolkit of the nvcc on the PATH. Its bin/nvcc is both the nvcc whose version is checked and
    the one that compiles."""
    environ = os.environ if environ is None else environ
    for name in ("CUDA_HOME", "CUDA_PATH"):
        root = environ.get(name)
        if root and (Path(root) / "bin" / "nvcc").exists():
            return str(Path(root))
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    return _toolkit_of(nvcc) if nvcc else None


def nvcc_version(root):
    """'13.0' for the toolkit at `root`, or None."""
    try:
        out = subprocess.run([str(Path(root) / "bin" / "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def cuda_include_dir(root):
    """The directory holding cuda_runtime.h in the toolkit at `root`, or None."""
    root = Path(root)
    for candidate in [root / "include", *sorted(root.glob("targets/*/include"))]:
        if (candidate / "cuda_runtime.h").exists():
            return str(candidate)
    return None


def find_cudart(root, site_packages):
    """The libcudart shared library to link the CUDA kernels against, or None: the toolkit's at
    `root` (lib64/, lib/ as in conda's and the pip-installed toolkit's layout, targets/*/lib/), else the one torch's CUDA wheels install beside torch in
    `site_packages`: nvidia/cu13/lib/libcudart.so.13 (CUDA 13's nvidia-cuda-runtime package) or
    nvidia/cuda_runtime/lib/libcudart.so.12 (CUDA 12's). Those hold only the versioned file, so
    the path is given to the linker whole rather than as -lcudart."""
    candidates = []
    if root:
        root = Path(root)
        candidates += [root / "lib64" / "libcudart.so", root / "lib" / "libcudart.so",
                       *sorted(root.glob("targets/*/lib/libcudart.so"))]
    if site_packages:
        candidates += sorted(Path(site_packages).glob("nvidia/*/lib/libcudart.so*"))
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return None
