"""Pure-PyTorch reference of every fused op: the specification and the test oracle.

Each function has the same signature as its compiled twin in :mod:`ddpm_fast.ops`, and is what
``ops`` runs when the compiled extension is missing or a case is not covered by a kernel.
"""

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "silu", "gelu")


def gather_timesteps(table, t, ndim):
    """``table[t]`` shaped to broadcast over a ``ndim``-D batch: (T,), (B,) -> (B, 1, ..., 1).

    This replaces the blog's ``extract``, which moved ``t`` to the CPU (a device sync) at every
    call; here ``t`` stays where it is.
    """
    return table.gather(0, t).reshape(t.shape[0], *((1,) * (ndim - 1)))


def q_sample(x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise):
    """Forward noising ``x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * noise``.

    x_start, noise: (B, ...); t: (B,) int64 in [0, T); the two tables: (T,). Returns (B, ...).
    """
    a = gather_timesteps(sqrt_alphas_cumprod, t, x_start.dim()).to(x_start.dtype)
    b = gather_timesteps(sqrt_one_minus_alphas_cumprod, t, x_start.dim()).to(x_start.dtype)
    return a * x_start + b * noise


def apply_activation(x, act):
    """``act`` is one of ``ACTIVATIONS``: 'none', 'silu' or 'gelu' (exact, erf-based)."""
    if act == "silu":
        return F.silu(x)
    if act == "gelu":
        return F.gelu(x)
    if act == "none":
        return x
    raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")


def group_norm_act(x, num_groups, weight, bias, scale, shift, eps, act):
    """GroupNorm, then optional ``y * (scale + 1) + shift``, then an activation.

    x: (N, C, H, W) (or any (N, C, *) shape), any memory format; weight, bias: (C,) or None;
    scale, shift: (N, C) or None (the time embedding); num_groups divides C;
    act: 'none' | 'silu' | 'gelu'.
    Statistics are computed in float32 for half-precision inputs. Returns (N, C, H, W).
    """
    y = F.group_norm(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x,
                     num_groups, None, None, eps)
    y = y.to(x.dtype)
    n, c = x.shape[:2]
    per_channel = (1, c) + (1,) * (x.dim() - 2)
    per_sample = (n, c) + (1,) * (x.dim() - 2)
    # The output keeps x's dtype (as nn.GroupNorm's with float32 parameters under autocast).
    if weight is not None:
        y = y * weight.to(x.dtype).view(per_channel)
    if bias is not None:
        y = y + bias.to(x.dtype).view(per_channel)
    if scale is not None:
        y = y * (scale.to(x.dtype).view(per_sample) + 1)
    if shift is not None:
        y = y + shift.to(x.dtype).view(per_sample)
    return apply_activation(y, act)


def linear_attention(qkv, heads, scale):
    """The core of the blog's ``LinearAttention``, between ``to_qkv`` and ``to_out``.

    qkv: (B, 3 * heads * dim_head, H, W), the ``to_qkv`` output, split into q, k, v along
    channels. q is softmaxed over its dim_head channels and multiplied by ``scale``, k is
    softmaxed over the H*W positions, ``context = k @ v^T`` (dim_head x dim_head per head) and
    the output is ``context^T @ q``. Returns (B, heads * dim_head, H, W).
    """
    b, c3, h, w = qkv.shape
    dim_head = c3 // (3 * heads)
    q, k, v = qkv.reshape(b, 3, heads, dim_head, h * w).unbind(1)
    q = q.softmax(dim=-2) * scale
    k = k.softmax(dim=-1)
    context = torch.einsum("b h d n, b h e n -> b h d e", k, v)
    out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
    return out.reshape(b, heads * dim_head, h, w)


def projected_linear_attention(x, w_qkv, heads, scale):
    """The blog's ``to_qkv`` (a 1x1 convolution without bias) followed by
    :func:`linear_attention`. x: (B, C, H, W); w_qkv: (3 * heads * dim_head, C, 1, 1).
    Returns (B, heads * dim_head, H, W).
    """
    return linear_attention(F.conv2d(x, w_qkv), heads, scale)


def threshold_scale(x0, dynamic_thresholding_ratio, sample_max_value):
    """Dynamic thresholding's per-sample scale (Imagen; diffusers' ``_threshold_sample``):
    ``s = clamp(quantile(|x0|, ratio), 1, sample_max_value)`` over each sample's elements.

    x0: (B, ...) -> (B, 1, ..., 1) in x0's dtype (the quantile in float32 for half types).
    """
    flat = x0.reshape(x0.shape[0], -1).abs()
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat, dynamic_thresholding_ratio, dim=1)
    s = torch.clamp(s, min=1.0, max=sample_max_value)
    return s.to(x0.dtype).reshape(x0.shape[0], *((1,) * (x0.dim() - 1)))


def sampler_update(x, model_output, prev_x0, noise, step, coefs, clip_sample_range=0.0,
                   dynamic_thresholding_ratio=0.0, sample_max_value=1.0):
    """One step of any sampler of :mod:`ddpm_fast.diffusion.samplers` (DDPM, DDIM, DPM-Solver++,
    SDE-DPM-Solver++), for any prediction type.

    With ``c = coefs[step[b]]`` for sample b (columns ``samplers.COEFFICIENTS``)::

        x0     = c[5] * x + c[6] * model_output       (the data prediction)
        x0     = clip(x0)                             (clip_sample_range > 0: clamp to its range;
                                                       dynamic_thresholding_ratio > 0: threshold)
        x_next = c[0] * x + c[1] * model_output + c[2] * x0 + c[3] * prev_x0 + c[4] * noise

    Thresholding is diffusers': ``s = clamp(quantile(|x0|, ratio), 1, sample_max_value)`` per
    sample, then ``x0 = clamp(x0, -s, s) / s``. At most one of the two is on.

    x, model_output: (B, ...); prev_x0, noise: (B, ...) or None (their terms are dropped); step:
    (B,) int64 rows of coefs in [0, S); coefs: (S, 7), float32 or x's dtype. Returns (x_next, x0).
    """
    if clip_sample_range > 0 and dynamic_thresholding_ratio > 0:
        raise ValueError("sampler_update: clip_sample_range and dynamic_thresholding_ratio are exclusive; set one")
    rows = coefs.index_select(0, step).to(x.dtype)

    def column(j):
        return rows[:, j].reshape(step.shape[0], *((1,) * (x.dim() - 1)))

    x0 = column(5) * x + column(6) * model_output
    if clip_sample_range > 0:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    elif dynamic_thresholding_ratio > 0 and x0.numel() > 0:
        s = threshold_scale(x0, dynamic_thresholding_ratio, sample_max_value)
        x0 = torch.clamp(x0, -s, s) / s
    x_next = column(0) * x + column(1) * model_output + column(2) * x0
    if prev_x0 is not None:
        x_next = x_next + column(3) * prev_x0
    if noise is not None:
        x_next = x_next + column(4) * noise
    return x_next, x0
