"""group_norm_act, GroupNorm + time-embedding scale/shift + activation: wrapper, fake, autograd."""

import torch

from . import policy, reference
from .layout import kernel_format
from .loading import covered


def group_norm_act(x, num_groups, weight, bias, scale, shift, eps, act):
    """Fused GroupNorm + scale/shift + activation; see :func:`reference.group_norm_act`.

    x: (N, C, H, W) contiguous or channels_last; weight, bias: (C,) or None; scale, shift:
    (N, C) or None; act: 'none' | 'silu' | 'gelu'. Returns (N, C, H, W) in x's memory format.
    """
    if act not in reference.ACTIVATIONS:
        raise ValueError(f"act must be one of {reference.ACTIVATIONS}, got {act!r}")
    if x.dtype in (torch.float16, torch.bfloat16):
        # Under autocast the parameters stay float32 while activations are 16-bit; the kernel
        # takes one dtype, and its statistics are accumulated in float32 either way.
        weight, bias, scale, shift = (p.to(x.dtype) if p is not None else None
                                      for p in (weight, bias, scale, shift))
    if covered("group_norm_act", x, weight, bias, scale, shift) and x.dim() == 4 and not policy.cpu_silu_is_slower(x, act):
        return torch.ops.ddpm_fast.group_norm_act(
            x, num_groups, weight, bias, scale, shift, eps, act
        )[0]
    return reference.group_norm_act(x, num_groups, weight, bias, scale, shift, eps, act)


def stats_dtype(dtype):
    """dtype of the saved GroupNorm statistics: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def register(namespace):
    """The fake kernels of ``group_norm_act`` and its backward, and the autograd formula."""
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::group_norm_act")
    def _(x, num_groups, weight, bias, scale, shift, eps, act):
        stats = x.new_empty((x.shape[0], num_groups), dtype=stats_dtype(x.dtype))
        return torch.empty_like(x, memory_format=kernel_format(x)), stats, torch.empty_like(stats)

    @torch.library.register_fake(f"{namespace}::group_norm_act_backward")
    def _(grad_y, x, mean, rstd, num_groups, weight, bias, scale, shift, act):
        def like(p):
            return torch.empty_like(p, memory_format=torch.contiguous_format) if p is not None else x.new_empty(0)

        dx = torch.empty_like(x, memory_format=kernel_format(x))
        return dx, like(weight), like(bias), like(scale), like(shift)

    def setup_context(ctx, inputs, output):
        x, num_groups, weight, bias, scale, shift, eps, act = inputs
        _, mean, rstd = output
        ctx.num_groups, ctx.act = num_groups, act
        ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)

    def backward(ctx, grad_y, grad_mean, grad_rstd):
        x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
        dx, dw, db, dscale, dshift = lib.group_norm_act_backward(
            grad_y, x, mean, rstd, ctx.num_groups, weight, bias, scale, shift, ctx.act
        )

        def keep(grad, p):
            return grad if p is not None else None

        return (dx, None, keep(dw, weight), keep(db, bias), keep(dscale, scale),
                keep(dshift, shift), None, None)

    torch.library.register_autograd(f"{namespace}::group_norm_act", backward, setup_context=setup_context)
