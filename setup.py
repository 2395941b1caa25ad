"""Builds ddpm_fast and its compiled extension ddpm_fast._C.

The CPU kernels are always built. The CUDA kernels are added when nvcc and a CUDA build of
torch are both present (see cuda_build.py); without them the CPU-only build proceeds.
"""

import glob
import os
import re
import shutil
import subprocess
import warnings

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def relative(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


# -fno-math-errno -fno-trapping-math (as in PyTorch's own build) let GCC vectorise the math
# loops. -fopenmp is what makes at::parallel_for parallel: with torch's OpenMP backend it is
# an inline `omp parallel` that compiles to a serial loop without it (the libgomp it links is
# the one torch has already loaded, same soname).
CXX_FLAGS = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
LINK_FLAGS = ["-fopenmp"]
sources = relative("csrc/ops.cpp") + relative("csrc/cpu/*.cpp")
extension = CppExtension("ddpm_fast._C", sources, extra_compile_args={"cxx": CXX_FLAGS},
                         extra_link_args=LINK_FLAGS)


def find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None and CUDA_HOME:
        candidate = os.path.join(CUDA_HOME, "bin", "nvcc")
        nvcc = candidate if os.path.exists(candidate) else None
    return nvcc


def nvcc_cuda_version(nvcc):
    """'13.0' from `nvcc --version`, or None."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def cuda_extension():
    """The CUDA build of ddpm_fast._C (CPU + CUDA kernels), or None for a CPU-only build.

    Needs a CUDA build of torch and nvcc of the same CUDA major version. The architectures are
    TORCH_CUDA_ARCH_LIST when set, else the visible GPUs' (torch's default), else sm_80 + sm_90.
    """
    if torch.version.cuda is None:
        return None  # CPU-only torch: nothing to link the CUDA kernels against
    nvcc = find_nvcc()
    if nvcc is None:
        warnings.warn("ddpm_fast: torch has CUDA but nvcc was not found; building the CPU kernels only")
        return None
    nvcc_version = nvcc_cuda_version(nvcc)
    if nvcc_version is None or nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
        warnings.warn(
            f"ddpm_fast: nvcc at {nvcc} is CUDA {nvcc_version} but torch was built with CUDA "
            f"{torch.version.cuda}; the major versions must match. Building the CPU kernels only: "
            "install the CUDA toolkit that matches torch (or the torch that matches nvcc) and "
            "reinstall to get the CUDA kernels."
        )
        return None
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    cuda_sources = relative("csrc/cuda/*.cu") + relative("csrc/cuda/*.cpp")
    return CUDAExtension(
        "ddpm_fast._C",
        sources + cuda_sources,
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-std=c++20"]},
        extra_link_args=LINK_FLAGS,
    )



setup(
    ext_modules=[cuda_extension() or extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
