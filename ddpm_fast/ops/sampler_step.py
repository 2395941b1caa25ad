"""sampler_update, the one step of every sampler: wrapper, fake kernel and autograd formula."""

import torch

from . import reference
from .layout import per_sample_format
from .loading import covered


def sampler_update(x, eps, prev_x0, noise, step, coefs):
    """Fused step of any sampler of :mod:`ddpm_fast.diffusion.samplers`; see
    :func:`reference.sampler_update`.

    x, eps: (B, C, H, W); prev_x0, noise: (B, C, H, W) or None; step: (B,) int64 rows of coefs
    (S, 6), float32 or x's dtype. Returns (x_next, x0), each (B, C, H, W).
    """
    if covered(x, eps, prev_x0, noise):
        return torch.ops.ddpm_fast.sampler_update(x, eps, prev_x0, noise, step, coefs)
    return reference.sampler_update(x, eps, prev_x0, noise, step, coefs)


def register(namespace):
    """The fake kernel and autograd formula of ``{namespace}::sampler_update``."""

    @torch.library.register_fake(f"{namespace}::sampler_update")
    def _(x, eps, prev_x0, noise, step, coefs):
        layout = per_sample_format(x, *(t for t in (eps, prev_x0, noise) if t is not None))
        return torch.empty_like(x, memory_format=layout), torch.empty_like(x, memory_format=layout)

    def setup_context(ctx, inputs, output):
        x, eps, prev_x0, noise, step, coefs = inputs
        ctx.has_prev_x0, ctx.has_noise = prev_x0 is not None, noise is not None
        ctx.save_for_backward(step, coefs)

    def backward(ctx, grad_out, grad_x0):
        # Both outputs are linear in the inputs: each gradient is a per-sample combination of
        # the two output gradients with the same coefficients. The tables get none.
        step, coefs = ctx.saved_tensors
        rows = coefs.index_select(0, step).to(grad_out.dtype)

        def column(j):
            return rows[:, j].reshape(step.shape[0], *((1,) * (grad_out.dim() - 1)))

        grad_x = column(0) * grad_out + column(4) * grad_x0
        grad_eps = column(1) * grad_out + column(5) * grad_x0
        grad_prev = column(2) * grad_out if ctx.has_prev_x0 else None
        grad_noise = column(3) * grad_out if ctx.has_noise else None
        return grad_x, grad_eps, grad_prev, grad_noise, None, None

    torch.library.register_autograd(f"{namespace}::sampler_update", backward, setup_context=setup_context)
