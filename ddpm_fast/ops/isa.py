"""The instruction-set level the CPU kernels run at, and how to force one.

The extension picks the best level the processor has at import (or the one the environment
variable DDPM_FAST_CPU_ISA names); tests and benchmarks force others to measure each.
"""

import contextlib

from . import loading

LEVELS = ("avx512", "avx2", "default")


def cpu_isa():
    """The instruction-set level the CPU kernels run at: 'avx512', 'avx2' or 'default' (baseline
    x86-64), or None without the compiled extension. It starts as the best this processor has,
    or as the environment variable DDPM_FAST_CPU_ISA says."""
    return loading._C.cpu_isa() if loading.compiled_ops_loaded() else None


def supported_cpu_isas():
    """The levels this processor can run the CPU kernels at, baseline first ('default', ...)."""
    return loading._C.supported_cpu_isas() if loading.compiled_ops_loaded() else ()


def set_cpu_isa(level):
    """Runs the CPU kernels at ``level`` ('avx512', 'avx2' or 'default') from now on, for every
    thread; returns the previous level. Raises ValueError for a level the processor lacks."""
    if not loading.compiled_ops_loaded():
        raise RuntimeError(f"the compiled extension is not loaded: {loading.load_error()}")
    if level not in LEVELS:
        raise ValueError(f"level must be 'avx512', 'avx2' or 'default', got {level!r}")
    global level_in_use
    previous = loading._C.cpu_isa()
    loading._C.set_cpu_isa(level)
    level_in_use = level
    return previous


@contextlib.contextmanager
def using_cpu_isa(level):
    """Runs the body with the CPU kernels at ``level``, then restores the previous level."""
    previous = set_cpu_isa(level)
    try:
        yield
    finally:
        set_cpu_isa(previous)


# The level the CPU kernels run at, kept here too so that per-call choices (policy.py) read a
# Python value, which torch.compile guards on, instead of calling into the extension.
level_in_use = cpu_isa()
