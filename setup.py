"""Builds ddpm_fast and its two compiled libraries, both on torch's stable ABI (TORCH_TARGET_VERSION
2.10, so one build loads in every torch from 2.10 on) and Python's limited API (abi3, 3.10+):

- ddpm_fast._C: the op schemas and the CPU kernels, always;
- ddpm_fast._cuda: the CUDA kernels, when torch has CUDA and a CUDA toolkit of the same major
  version is found. ddpm_fast/ops/loading.py loads it only when the running torch has CUDA.

The CUDA part never fails the install: when it cannot be built or linked, the build says why and
installs the CPU ops; DDPM_FAST_REQUIRE_CUDA=1 makes that an error.
"""

import glob
import importlib.util
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIRE_CUDA = os.environ.get("DDPM_FAST_REQUIRE_CUDA") == "1"


def load_cuda_build():
    """tools/cuda_build.py, loaded by path: build-time code, not part of the installed package."""
    spec = importlib.util.spec_from_file_location("cuda_build", os.path.join(HERE, "tools", "cuda_build.py"))
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


def say(message):
    """A build message that shows in pip's output (pip prints a build's stderr with -v, and always
    on failure)."""
    print(f"ddpm_fast: {message}", file=sys.stderr, flush=True)


def cuda_unavailable(reason):
    """No CUDA library: an error under DDPM_FAST_REQUIRE_CUDA=1, else said plainly."""
    if REQUIRE_CUDA:
        raise RuntimeError(f"ddpm_fast: DDPM_FAST_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    say(f"not building the CUDA kernels: {reason}. Installing the CPU ops only.")
    return None


def relative(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


# -fno-math-errno -fno-trapping-math (as in PyTorch's own build) let GCC vectorise the math
# loops; -fopenmp-simd honours their `omp simd` pragmas. The loops run in parallel through
# torch::stable::parallel_for, that is on torch's own thread pool: no OpenMP runtime is linked.
CXX_FLAGS = ["-O3", "-std=c++20", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
             f"-DTORCH_TARGET_VERSION={cuda_build.TORCH_TARGET_VERSION}"]


def cpu_extension():
    sources = relative("csrc/module.cpp") + relative("csrc/cpu/*.cpp")
    return CppExtension("ddpm_fast._C", sources, extra_compile_args={"cxx": CXX_FLAGS}, py_limited_api=True)


def cuda_extension():
    """ddpm_fast._cuda (the CUDA kernels and their binding), or None.

    Needs a CUDA build of torch, nvcc of the same CUDA major version, and libcudart (the
    toolkit's, or the nvidia-cuda-runtime package's beside torch). The architectures are
    TORCH_CUDA_ARCH_LIST when set, else the visible GPUs' (torch's default), else
    cuda_build.DEFAULT_ARCH_LIST (sm_80, sm_90 and sm_90's PTX for newer GPUs).
    """
    if torch.version.cuda is None:
        return None  # CPU-only torch: nothing to link the CUDA kernels against, nothing to say
    if CUDA_TOOLKIT is None:
        return cuda_unavailable("torch has CUDA but no CUDA toolkit was found (nvcc on the PATH, or CUDA_HOME)")
    nvcc_version = cuda_build.nvcc_version(CUDA_TOOLKIT)
    if nvcc_version is None or nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
        return cuda_unavailable(
            f"nvcc in {CUDA_TOOLKIT} is CUDA {nvcc_version} but torch was built with CUDA {torch.version.cuda}; "
            "the major versions must match")
    site_packages = os.path.dirname(os.path.dirname(torch.__file__))
    cudart = cuda_build.find_cudart(CUDA_TOOLKIT, site_packages)
    if cudart is None:
        return cuda_unavailable(f"libcudart was found neither in {CUDA_TOOLKIT} nor under {site_packages}/nvidia")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_build.DEFAULT_ARCH_LIST
    say(f"building the CUDA kernels with {CUDA_TOOLKIT} (CUDA {nvcc_version}), linking {cudart}")
    extension = CUDAExtension(
        "ddpm_fast._cuda",
        relative("csrc/cuda/*.cu") + relative("csrc/cuda/*.cpp"),
        extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-std=c++20"]},
        extra_link_args=[cudart],
        py_limited_api=True,
        # A failed build skips this library (see BuildLibraries) instead of failing the install.
        optional=not REQUIRE_CUDA,
    )
    # The runtime packages hold only libcudart.so.<major>, which -lcudart cannot find: the path
    # above is linked instead (its soname, libcudart.so.<major>, is the one torch has loaded).
    extension.libraries = [name for name in extension.libraries if name != "cudart"]
    return extension


class BuildLibraries(BuildExtension):
    """torch's BuildExtension, except that an optional library (the CUDA one) that fails to build
    is skipped with a plain message and the rest of the install goes on."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            if not ext.optional:
                raise
            say(f"building {ext.name} failed ({type(error).__name__}: {error}); installing the CPU ops only. "
                "Set DDPM_FAST_REQUIRE_CUDA=1 to make this an error.")


def extensions():
    if torch.__version__ < (2, 10):  # TorchVersion compares as a version, not as a string
        say(f"torch {torch.__version__} is older than 2.10, the oldest whose stable ABI the compiled ops use: "
            "installing without them (the pure-PyTorch reference ops run instead)")
        return []
    return [ext for ext in (cpu_extension(), cuda_extension()) if ext is not None]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildLibraries.with_options(use_ninja=True)},
    # abi3 wheels: the libraries use Python's limited API only (Py_LIMITED_API=3.10).
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
