"""Builds the CUDA emulation and drives it from Python.

The emulated library holds the unchanged kernel sources of ``csrc/cuda/*.cu`` and the real
binding ``csrc/cuda/bindings.cpp``, compiled by the host C++ compiler against the emulated
execution model of this folder, with the ops registered for CPU tensors as
``torch.ops.ddpm_fast_emulated.*`` (same schemas as ``torch.ops.ddpm_fast``).
"""

import contextlib
import ctypes
import functools
import os
from pathlib import Path

import torch

import cuda_build

from ddpm_fast import ops

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAMESPACE = "ddpm_fast_emulated"
SCHEDULES = ("forward", "reverse", "shuffled")
# The emulated devices: H100 has an H100's SM count (132) and CUDA's grid limits, so launchers
# size their grids as they would there; SMALL has 4 SMs and a grid.y limit of 3, so that small
# inputs take the path meant for more than 65535 rows of blocks.
H100, SMALL = 0, 1


def cuda_headers():
    """The CUDA toolkit's include directory, or None when no toolkit is installed."""
    root = cuda_build.find_cuda_toolkit()
    return cuda_build.cuda_include_dir(root) if root else None


def _write_unit(path, text):
    if not path.exists() or path.read_text() != text:  # unchanged units are not rebuilt
        path.write_text(text)
    return str(path)


def _translation_units(directory):
    """One C++ file per .cu source, including it unchanged (g++ takes no .cu file as C++), and one
    for the binding, compiled for the torch version setup.py targets (TORCH_TARGET_VERSION, which
    only this file may see: the emulation's own guarded_memory.cpp uses c10 beyond the stable ABI)."""
    directory.mkdir(parents=True, exist_ok=True)
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + [HERE / "broken_kernels.cu"]
    units = [_write_unit(directory / f"{source.stem}_unit.cpp", f'#include "{source}"\n') for source in sources]
    binding = ROOT / "csrc" / "cuda" / "bindings.cpp"
    text = f'#define TORCH_TARGET_VERSION {cuda_build.TORCH_TARGET_VERSION}\n#include "{binding}"\n'
    return units + [_write_unit(directory / "bindings_unit.cpp", text)]


@functools.cache
def library():
    """Builds (once per source change, cached by torch's extension builder) and loads the
    emulated library; returns its ctypes handle. Python's fake kernels and autograd formulas
    are registered for its ops as for ddpm_fast's."""
    from torch.utils import cpp_extension

    include = cuda_headers()
    if include is None:
        raise RuntimeError("the CUDA toolkit headers were not found (set CUDA_HOME or put nvcc on the PATH)")
    build_dir = Path(os.environ.get("DDPM_FAST_EMULATION_BUILD", Path.home() / ".cache" / "ddpm_fast" / "cuda_emulation"))
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(HERE / name) for name in ("runtime.cpp", "guarded_memory.cpp", "op_library.cpp")]
    sources += _translation_units(build_dir / "units")
    cpp_extension.load(
        name="ddpm_fast_cuda_emulation",
        sources=sources,
        extra_include_paths=[include, str(HERE), str(ROOT / "csrc"), str(ROOT / "csrc" / "cuda")],
        extra_cflags=["-O2", "-std=c++20", "-pthread", "-Wno-unknown-pragmas",
                      f"-DDDPM_FAST_CUDA_LIBRARY={NAMESPACE}", "-DDDPM_FAST_CUDA_DISPATCH_KEY=CPU"],
        extra_ldflags=["-pthread"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    lib = ctypes.CDLL(str(build_dir / "ddpm_fast_cuda_emulation.so"))
    for name in ("cuda_emulation_faults", "cuda_emulation_launch_log"):
        getattr(lib, name).restype = ctypes.c_char_p
    lib.cuda_emulation_configure.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int]
    ops.register_fakes_and_autograd(NAMESPACE)
    _configure(lib)
    return lib


def emulated_ops():
    """``torch.ops.ddpm_fast_emulated``: the CUDA binding and kernels, on CPU tensors."""
    library()
    return getattr(torch.ops, NAMESPACE)


def configure(schedule="forward", workers=2, seed=0, device=H100):
    """How the next launches run: the order of threads and blocks (``SCHEDULES``), how many OS
    threads run blocks concurrently, the shuffle seed, and the current device (H100 or SMALL)."""
    _configure(library(), schedule, workers, seed, device)


def _configure(lib, schedule="forward", workers=2, seed=0, device=H100):
    if lib.cuda_emulation_configure(schedule.encode(), workers, seed, device) != 0:
        raise ValueError(f"schedule must be one of {SCHEDULES} and device H100 or SMALL, got {schedule!r}, {device!r}")


@contextlib.contextmanager
def schedule(name, workers=2, seed=0, device=H100):
    """Runs the body's launches under schedule ``name`` (on ``device``), then restores the
    defaults."""
    configure(name, workers, seed, device)
    try:
        yield
    finally:
        configure()


def take_faults():
    """The faults reported since the last call (out-of-bounds writes, deadlocks, misused warp
    operations, ...), one message each, and forgets them."""
    lib = library()
    text = lib.cuda_emulation_faults().decode()
    lib.cuda_emulation_clear_faults()
    return [line for line in text.splitlines() if line]


def take_launches():
    """``(kernel, grid, block)`` of every launch since the last call, grid and block as
    (x, y, z) tuples, and forgets them."""
    lib = library()
    text = lib.cuda_emulation_launch_log().decode()
    lib.cuda_emulation_clear_launch_log()
    launches = []
    for line in text.splitlines():
        name, grid, block = line.split("|")
        launches.append((name, _dims(grid), _dims(block)))
    return launches


def _dims(field):
    return tuple(int(v) for v in field.split(","))


@contextlib.contextmanager
def guarded_memory():
    """CPU tensors allocated in the body get guard regions (checked after every launch) and
    start as 0xff bytes: NaN in every float type."""
    lib = library()
    lib.cuda_emulation_guard_memory(1)
    try:
        yield
    finally:
        lib.cuda_emulation_guard_memory(0)
