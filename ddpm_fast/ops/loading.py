"""Loading the compiled libraries, and which device types and dtypes their kernels cover.

``ddpm_fast._C`` holds the op schemas (``csrc/op_schemas.h``) and the CPU kernels;
``ddpm_fast._cuda`` the CUDA kernels, loaded only when torch has CUDA. A missing or broken
build never breaks the package: every op then runs its pure-PyTorch reference.
"""

import importlib.util
import warnings

import torch

# The compiled libraries are built on torch's stable ABI for torch 2.10 and later (setup.py).
MIN_TORCH = (2, 10)

# dtypes each backend's kernels are written for; anything else runs the reference.
KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
# Ops whose kernels on a backend take more dtypes than KERNEL_DTYPES: the CPU GroupNorm and both
# CPU attention ops read and write bfloat16 and compute in float32 (csrc/cpu/storage.h).
EXTRA_KERNEL_DTYPES = {(op, "cpu"): (torch.bfloat16,)
                       for op in ("group_norm_act", "linear_attention", "projected_linear_attention")}


def _load_compiled_ops():
    """Imports ddpm_fast._C (the schemas and CPU kernels); returns why it could not, or None."""
    if torch.__version__ < MIN_TORCH:  # TorchVersion compares as a version, not as a string
        return (f"torch {torch.__version__} is older than 2.10, the oldest torch the compiled ops are "
                "built for (its stable ABI); upgrade torch to use them")
    try:
        from .. import _C  # noqa: F401  (importing the library runs its STABLE_TORCH_LIBRARY registrations)
    except (ImportError, OSError) as error:  # a missing or broken build must not break the package
        return f"{type(error).__name__}: {error}"
    return None


_LOAD_ERROR = _load_compiled_ops()
if _LOAD_ERROR is not None:
    warnings.warn(
        f"ddpm_fast: the compiled extension could not be loaded ({_LOAD_ERROR}); "
        "using the pure-PyTorch reference ops. Reinstall with 'pip install .' to build it.",
        RuntimeWarning,
        stacklevel=2,
    )
    _C = None
else:
    from .. import _C

    if _C.cpu_isa_problem:
        warnings.warn(f"ddpm_fast: {_C.cpu_isa_problem}", RuntimeWarning, stacklevel=2)


def load_cuda_library(path):
    """Loads the CUDA kernels' library at ``path`` into torch's dispatcher; returns why it could not
    (the loader's message), or None. The CPU ops stay registered either way."""
    try:
        torch.ops.load_library(path)
    except OSError as error:  # e.g. no libcudart, or a torch without the CUDA symbols it needs
        return f"{type(error).__name__}: {error}"
    return None


def _load_cuda_kernels():
    """ddpm_fast._cuda, the CUDA kernels, is a library of its own, loaded only when torch has CUDA,
    so that a CPU-only machine never needs libcudart. Returns why the CUDA kernels are not loaded,
    or None; warns (once, at import) when they should be there and are not."""
    if _LOAD_ERROR is not None or torch.version.cuda is None:
        return _LOAD_ERROR or "torch has no CUDA"
    spec = importlib.util.find_spec("ddpm_fast._cuda")
    if spec is None:
        problem = ("ddpm_fast._cuda was not built: the build skips it when it finds no CUDA toolkit "
                   "matching torch's CUDA, or no libcudart (see 'pip install -v .'; "
                   "DDPM_FAST_REQUIRE_CUDA=1 makes that an error)")
        if not torch.cuda.is_available():
            return problem  # no GPU here: nothing is lost, nothing to warn about
    else:
        problem = load_cuda_library(spec.origin)
        if problem is None:
            return None
    warnings.warn(f"ddpm_fast: the CUDA kernels are not loaded ({problem}); CUDA tensors run the "
                  "pure-PyTorch reference ops, the CPU ops are unaffected.", RuntimeWarning, stacklevel=3)
    return problem


_CUDA_LOAD_ERROR = _load_cuda_kernels()


def compiled_ops_loaded():
    """True when the compiled extension ``ddpm_fast._C`` is loaded."""
    return _LOAD_ERROR is None


def load_error():
    """Why the compiled extension failed to load, or None."""
    return _LOAD_ERROR


def cuda_load_error():
    """Why the CUDA kernels (ddpm_fast._cuda) are not loaded, or None when they are."""
    return _CUDA_LOAD_ERROR


def _find_backends():
    if not compiled_ops_loaded():
        return ()
    return tuple(
        device
        for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key("ddpm_fast::q_sample", key)
    )


# Found once at import: the dispatcher query is not something torch.compile can trace.
_BACKENDS = _find_backends()


def compiled_backends():
    """The device types with compiled kernels, e.g. ``('cpu',)`` or ``('cpu', 'cuda')``."""
    return _BACKENDS


def kernel_dtypes(op, device_type):
    """The dtypes ``op``'s compiled kernel takes on ``device_type`` ('cpu' or 'cuda')."""
    return KERNEL_DTYPES[device_type] + EXTRA_KERNEL_DTYPES.get((op, device_type), ())


def covered(op, *tensors):
    """Whether ``op`` has a compiled kernel for these tensors' device and dtype (None entries,
    for optional inputs, are skipped)."""
    x = tensors[0]
    return (
        x.device.type in _BACKENDS
        and x.dtype in kernel_dtypes(op, x.device.type)
        and all(t.device == x.device and t.dtype == x.dtype for t in tensors if t is not None)
    )
