"""Where the CPU runs the reference instead of a kernel, because the kernel was measured slower.

One table, ``CPU_RULES``: each rule names the op, the case, and the measurement behind it. The
functions below are the rules as code; the wrappers call them through this module, so a test
can switch a rule off. :func:`cpu_op_choices` reports what runs here. Every figure is from the
development machine's 2-core AMD EPYC (Zen 4), each level forced with DDPM_FAST_CPU_ISA.
"""

import dataclasses

import torch

from . import isa, loading


@dataclasses.dataclass(frozen=True)
class Rule:
    op: str
    reference_when: str  # the case, in words
    measured: str  # the figures that decided it, and the command that measured them


CPU_RULES = (
    Rule("group_norm_act", "act='silu' at baseline x86-64",
         "SSE2 has 4 lanes and no FMA: the fused GroupNorm+SiLU forward ran 0.71-0.81x the "
         "reference at 32x64x28x28, where GELU (1.4x) and no activation (1.8x) win "
         "(the benchmark suite's group_norm_act group at DDPM_FAST_CPU_ISA=default)"),
    Rule("linear_attention", "training on images of fewer than CPU_ATTENTION_BACKWARD_MIN_PIXELS "
         "pixels, or training at any size at baseline x86-64",
         "the fused backward, small GEMMs per (sample, head), loses to the reference's batched "
         "GEMMs below 16x16: 0.72-0.90x at 7x7 at AVX2 and AVX-512, at 14x14 0.91-1.02x with 56 "
         "channels at AVX2 and 0.81-0.87x at baseline (1.1-1.2x with 28 channels at AVX2/AVX-512); "
         "at baseline the core's forward+backward ran 0.70-0.74x at 16x384x28x28 "
         "(scripts/blog_op_shapes.py, scripts/cpu_isa_table.py)"),
    Rule("projected_linear_attention", "as linear_attention when training; and below "
         "CPU_PROJECTED_ATTENTION_MIN_PIXELS pixels the projection runs as a GEMM before the "
         "fused core",
         "projecting inside the kernel pays off from 14x14 on (1.5-1.9x); at 7x7 it is "
         "0.94-0.98x, where a GEMM projection before the fused core is 1.05x "
         "(scripts/blog_op_shapes.py)"),
    Rule("accelerate() layout", "NCHW instead of channels_last at torch's baseline level",
         "the blog's U-Net's batch-64 forward is faster channels_last at AVX2 and AVX-512 (331 "
         "against 387 ms, 311 against 370 ms) and slower at baseline x86-64 (905 against 794 ms) "
         "(scripts/at_cpu_isa.py)"),
    Rule("accelerate() convolutions", "plain nn.Conv2d/ConvTranspose2d, not prepacked ones, at "
         "torch's baseline level",
         "weights packed once for oneDNN, against plain convolutions, in the accelerated seed "
         "U-Net's forward (medians, one quiet run): fp32 1.00x at b1, 1.01-1.03x at b4, "
         "1.01-1.04x at b16 at AVX2 and AVX-512; bf16 autocast at AVX-512 1.07x, 1.15x, 1.05x; "
         "slower at baseline x86-64 in earlier noisy probes (python scripts/at_cpu_isa.py LEVEL "
         "-- python scripts/profile_forward.py --batch B [--bf16])"),
)

CPU_ATTENTION_BACKWARD_MIN_PIXELS = 256
CPU_PROJECTED_ATTENTION_MIN_PIXELS = 100


def cpu_silu_is_slower(x, act):
    """The group_norm_act rule: SiLU on the CPU at baseline x86-64 runs the reference."""
    return act == "silu" and x.device.type == "cpu" and isa.level_in_use == "default"


def cpu_attention_backward_is_slower(*tensors):
    """The attention rule: training on small images (or at baseline x86-64) runs the reference."""
    x = tensors[0]
    slower_here = (isa.level_in_use == "default"
                   or x.shape[-2] * x.shape[-1] < CPU_ATTENTION_BACKWARD_MIN_PIXELS)
    return slower_here and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def cpu_projects_inside_the_kernel(x):
    """The projected-attention rule: below CPU_PROJECTED_ATTENTION_MIN_PIXELS, a GEMM projects."""
    return x.shape[-2] * x.shape[-1] >= CPU_PROJECTED_ATTENTION_MIN_PIXELS


def cpu_prefers_channels_last():
    """Whether CPU convolutions run faster channels_last here, for accelerate()'s default.

    Decided by torch's own CPU level, since oneDNN runs the convolutions (the "accelerate()
    layout" rule of CPU_RULES)."""
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def cpu_prepacks_convolutions():
    """Whether accelerate()'s CPU convolutions run oneDNN on packed weights when no gradient is
    needed (the "accelerate() convolutions" rule of CPU_RULES): where oneDNN is there and torch
    runs above its baseline level."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and torch.backends.cpu.get_cpu_capability() != "DEFAULT")


OP_NAMES = ("q_sample", "group_norm_act", "linear_attention", "projected_linear_attention", "sampler_update")


def cpu_op_choices():
    """What runs on the CPU here, per op: 'fused', or 'reference' and why; and the layout
    accelerate() gives CPU models. Shown by :func:`ddpm_fast.cpu_report`."""
    if not loading.compiled_ops_loaded():
        return {op: f"reference (no compiled extension: {loading.load_error()})" for op in OP_NAMES}
    choices = {op: "fused" for op in OP_NAMES}
    for op in ("linear_attention", "projected_linear_attention"):
        choices[op] = ("fused; reference when training (its backward is slower at this level)"
                       if isa.level_in_use == "default" else
                       f"fused; reference when training on images of fewer than "
                       f"{CPU_ATTENTION_BACKWARD_MIN_PIXELS} pixels (its backward is slower there)")
    if isa.level_in_use == "default":
        choices["group_norm_act"] = "fused; reference with act='silu' (its SiLU is slower at this level)"
    choices["projected_linear_attention"] += (
        f"; a GEMM projection before the fused core below {CPU_PROJECTED_ATTENTION_MIN_PIXELS} pixels")
    choices["accelerate() layout"] = (
        "channels_last" if cpu_prefers_channels_last()
        else "NCHW (oneDNN's channels_last convolutions are slower at torch's baseline level)")
    choices["accelerate() convolutions"] = (
        "prepacked for oneDNN when no gradient is needed" if cpu_prepacks_convolutions()
        else "plain (prepacked ones are slower at torch's baseline level, or oneDNN is off)")
    return choices
