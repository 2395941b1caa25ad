"""Builds ddpm_fast and its compiled extension ddpm_fast._C.

The CPU kernels are always built. The CUDA kernels are added when nvcc and a CUDA build of
torch are both present (see ddpm_fast/cuda_build.py); without them the CPU-only build proceeds.
"""

import glob
import importlib.util
import os
import warnings

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def load_cuda_build():
    """ddpm_fast/cuda_build.py, loaded by path: the package itself is not importable yet."""
    spec = importlib.util.spec_from_file_location("cuda_build", os.path.join(HERE, "ddpm_fast", "cuda_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_build = load_cuda_build()
# torch.utils.cpp_extension fixes its CUDA_HOME when imported, from the nvcc on the PATH, which may
# be a wrapper script outside the toolkit: point it at the toolkit that nvcc really runs, so the
# nvcc whose version is checked below is the nvcc that compiles, with that toolkit's headers.
CUDA_TOOLKIT = cuda_build.find_cuda_toolkit()
if CUDA_TOOLKIT and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = CUDA_TOOLKIT

import torch  # noqa: E402  (after CUDA_HOME is settled)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


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


def cuda_extension():
    """The CUDA build of ddpm_fast._C (CPU + CUDA kernels), or None for a CPU-only build.

    Needs a CUDA build of torch and nvcc of the same CUDA major version. The architectures are
    TORCH_CUDA_ARCH_LIST when set, else the visible GPUs' (torch's default), else
    cuda_build.DEFAULT_ARCH_LIST (sm_80, sm_90 and sm_90's PTX for newer GPUs).
    """
    if torch.version.cuda is None:
        return None  # CPU-only torch: nothing to link the CUDA kernels against
    if CUDA_TOOLKIT is None:
        warnings.warn("ddpm_fast: torch has CUDA but no CUDA toolkit (nvcc) was found; building the CPU kernels only")
        return None
    nvcc = os.path.join(CUDA_TOOLKIT, "bin", "nvcc")
    nvcc_version = cuda_build.nvcc_version(CUDA_TOOLKIT)
    if nvcc_version is None or nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
        warnings.warn(
            f"ddpm_fast: nvcc at {nvcc} is CUDA {nvcc_version} but torch was built with CUDA "
            f"{torch.version.cuda}; the major versions must match. Building the CPU kernels only: "
            "install the CUDA toolkit that matches torch (or the torch that matches nvcc) and "
            "reinstall to get the CUDA kernels."
        )
        return None
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_build.DEFAULT_ARCH_LIST
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
