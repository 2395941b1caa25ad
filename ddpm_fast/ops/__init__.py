"""Python face of the compiled ops: every op's wrapper, fake kernel and autograd formula.

The schemas live in ``csrc/op_schemas.h`` (namespace ``ddpm_fast``) and each backend registers
its kernels in C++. Each op's file here (noising, group_norm, attention, sampler_step) holds its
wrapper, with the signature of its twin in :mod:`ddpm_fast.ops.reference`, and the fake kernel
and autograd formula torch.compile and training need. A wrapper runs the reference when no
kernel covers a case (extension missing, another device or dtype, or a case :mod:`.policy`
measured slower), so callers never need to check.

- :mod:`.loading`: loading the compiled libraries, which devices and dtypes they cover;
- :mod:`.isa`: the CPU kernels' instruction-set level, and forcing one;
- :mod:`.policy`: the fused-vs-reference rules, one table with its measurements;
- :mod:`.layout`: the memory formats the kernels return;
- :mod:`.cpu_report`: what runs on this CPU, for people.
"""

from . import attention, group_norm, noising, policy, reference, sampler_step
from .attention import linear_attention, projected_linear_attention
from .group_norm import group_norm_act, stats_dtype
from .isa import cpu_isa, set_cpu_isa, supported_cpu_isas, using_cpu_isa
from .loading import (MIN_TORCH, compiled_backends, compiled_ops_loaded, cuda_load_error,
                      load_cuda_library, load_error)
from .noising import q_sample
from .pointwise_conv import conv1x1
from .policy import OP_NAMES, cpu_op_choices, cpu_prefers_channels_last
from .sampler_step import sampler_update


def register_fakes_and_autograd(namespace):
    """Registers the fake kernels and autograd formulas for the ops of library ``namespace``:
    ``ddpm_fast``, or the CUDA emulation's copy of its schemas in the tests."""
    for op_file in (noising, group_norm, attention, sampler_step):
        op_file.register(namespace)


if compiled_ops_loaded():
    register_fakes_and_autograd("ddpm_fast")

__all__ = [
    "MIN_TORCH", "OP_NAMES", "compiled_backends", "compiled_ops_loaded", "conv1x1", "cpu_isa",
    "cpu_op_choices", "cpu_prefers_channels_last", "cuda_load_error", "group_norm_act",
    "linear_attention", "load_cuda_library", "load_error", "projected_linear_attention",
    "q_sample", "reference", "register_fakes_and_autograd", "sampler_update", "set_cpu_isa",
    "stats_dtype", "supported_cpu_isas", "using_cpu_isa",
]
