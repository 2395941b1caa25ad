"""sampler_update, the one step of every sampler: wrapper, fake kernel and autograd formula."""

import torch

from . import reference
from .layout import per_sample_format
from .loading import covered


def sampler_update(x, model_output, prev_x0, noise, step, coefs, clip_sample_range=0.0,
                   dynamic_thresholding_ratio=0.0, sample_max_value=1.0):
    """Fused step of any sampler of :mod:`ddpm_fast.diffusion.samplers`; see
    :func:`reference.sampler_update`.

    x, model_output: (B, C, H, W); prev_x0, noise: (B, C, H, W) or None; step: (B,) int64 rows
    of coefs (S, 7), float32 or x's dtype. ``clip_sample_range > 0`` clamps the data prediction
    x0 to that range, ``dynamic_thresholding_ratio`` in (0, 1] thresholds it per sample (with
    ``sample_max_value``); 0 turns each off. Returns (x_next, x0), each (B, C, H, W).
    """
    args = (x, model_output, prev_x0, noise, step, coefs, float(clip_sample_range),
            float(dynamic_thresholding_ratio), float(sample_max_value))
    if covered("sampler_update", x, model_output, prev_x0, noise):
        return torch.ops.ddpm_fast.sampler_update(*args)
    return reference.sampler_update(*args)


def _clipped_x0_grad(grad, x0, clip_sample_range, ratio, sample_max_value):
    """The gradient of the clipped or thresholded x0 carried back to the raw x0 = c5 x + c6 m.

    Clipping passes it where |x0| <= range. Thresholding, x0 / s inside [-s, s], passes it there
    divided by s, plus the path through s = clamp(quantile(|x0|), 1, max): the two order
    statistics the quantile interpolates get their weights of dL/ds (as torch.quantile's own
    backward does), where the clamp lets s move.
    """
    if clip_sample_range > 0:
        return grad * (x0.abs() <= clip_sample_range)
    b = x0.shape[0]
    flat = x0.reshape(b, -1)
    magnitudes, order = flat.abs().sort(dim=1)
    n = flat.shape[1]
    position = ratio * (n - 1)
    below, above = int(position), min(int(position) + 1, n - 1)
    weight = position - below
    q = torch.lerp(magnitudes[:, below], magnitudes[:, above], weight)
    s = q.clamp(min=1.0, max=sample_max_value).unsqueeze(1)
    g = grad.reshape(b, -1)
    inside = flat.abs() <= s
    grad_raw = g * inside / s
    grad_s = -(g * flat * inside).sum(dim=1, keepdim=True) / s**2
    grad_q = grad_s * ((q >= 1.0) & (q <= sample_max_value)).unsqueeze(1)
    picks = order[:, [below, above]]
    grad_magnitudes = torch.zeros_like(flat).scatter_add_(
        1, picks, grad_q * torch.tensor([1.0 - weight, weight], dtype=flat.dtype, device=flat.device))
    return (grad_raw + grad_magnitudes * flat.sign()).reshape(x0.shape)


def register(namespace):
    """The fake kernel and autograd formula of ``{namespace}::sampler_update``."""

    @torch.library.register_fake(f"{namespace}::sampler_update")
    def _(x, model_output, prev_x0, noise, step, coefs, clip_sample_range=0.0,
          dynamic_thresholding_ratio=0.0, sample_max_value=1.0):
        layout = per_sample_format(x, *(t for t in (model_output, prev_x0, noise) if t is not None))
        return torch.empty_like(x, memory_format=layout), torch.empty_like(x, memory_format=layout)

    def setup_context(ctx, inputs, output):
        x, model_output, prev_x0, noise, step, coefs, clip_sample_range, ratio, sample_max_value = inputs
        ctx.has_prev_x0, ctx.has_noise = prev_x0 is not None, noise is not None
        ctx.clip = (clip_sample_range, ratio, sample_max_value)
        ctx.clamps = clip_sample_range > 0 or ratio > 0
        # The clamp's gradient needs the raw x0, recomputed from x and the model output.
        ctx.save_for_backward(step, coefs, *((x, model_output) if ctx.clamps else ()))

    def backward(ctx, grad_out, grad_x0):
        # Without a clamp both outputs are linear in the inputs: each gradient is a per-sample
        # combination of the two output gradients with the same coefficients. The tables get none.
        step, coefs, *inputs = ctx.saved_tensors
        rows = coefs.index_select(0, step).to(grad_out.dtype)

        def column(j):
            return rows[:, j].reshape(step.shape[0], *((1,) * (grad_out.dim() - 1)))

        grad_raw_x0 = grad_x0 + column(2) * grad_out
        if ctx.clamps:
            x, model_output = inputs
            grad_raw_x0 = _clipped_x0_grad(grad_raw_x0, column(5) * x + column(6) * model_output, *ctx.clip)
        grad_x = column(0) * grad_out + column(5) * grad_raw_x0
        grad_m = column(1) * grad_out + column(6) * grad_raw_x0
        grad_prev = column(3) * grad_out if ctx.has_prev_x0 else None
        grad_noise = column(4) * grad_out if ctx.has_noise else None
        return grad_x, grad_m, grad_prev, grad_noise, None, None, None, None, None

    torch.library.register_autograd(f"{namespace}::sampler_update", backward, setup_context=setup_context)
