"""q_sample, the forward noising: its wrapper, fake kernel and autograd formula."""

import torch

from . import reference
from .layout import per_sample_format
from .loading import covered


def q_sample(x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise):
    """Fused ``sqrt_ab[t] * x_start + sqrt_1mab[t] * noise``; see :func:`reference.q_sample`.

    x_start, noise: (B, C, H, W); t: (B,) int64; the two tables: (T,). Returns (B, C, H, W).
    """
    if covered("q_sample", x_start, noise):
        return torch.ops.ddpm_fast.q_sample(
            x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise
        )
    return reference.q_sample(x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise)


def register(namespace):
    """The fake kernel and autograd formula of ``{namespace}::q_sample``."""

    @torch.library.register_fake(f"{namespace}::q_sample")
    def _(x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise):
        return torch.empty_like(x_start, memory_format=per_sample_format(x_start, noise))

    def setup_context(ctx, inputs, output):
        x_start, t, a, b, noise = inputs
        ctx.save_for_backward(t, a, b)

    def backward(ctx, grad):
        t, a, b = ctx.saved_tensors
        ga = reference.gather_timesteps(a, t, grad.dim()).to(grad.dtype)
        gb = reference.gather_timesteps(b, t, grad.dim()).to(grad.dtype)
        return grad * ga, None, None, None, grad * gb

    torch.library.register_autograd(f"{namespace}::q_sample", backward, setup_context=setup_context)
