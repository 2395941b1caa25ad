"""The U-Net's linear attention: the core, and the core with its qkv projection; wrappers,
fake kernels and autograd formulas."""

import torch

from . import pointwise_conv, policy, reference
from .layout import kernel_format
from .loading import covered


def _head_dim_covered(qkv, heads):
    # The CUDA kernels hold a head in registers: dim_head <= 64 (<= 32 in float64).
    if qkv.device.type != "cuda":
        return True
    return qkv.shape[1] // (3 * heads) <= (32 if qkv.dtype == torch.float64 else 64)


def linear_attention(qkv, heads, scale):
    """Fused linear-attention core; see :func:`reference.linear_attention`.

    qkv: (B, 3 * heads * dim_head, H, W) -> (B, heads * dim_head, H, W).
    """
    if covered("linear_attention", qkv) and qkv.dim() == 4 and _head_dim_covered(qkv, heads):
        if qkv.device.type == "cpu" and policy.cpu_attention_backward_is_slower(qkv):
            return reference.linear_attention(qkv, heads, scale)
        return torch.ops.ddpm_fast.linear_attention(qkv, heads, scale)
    return reference.linear_attention(qkv, heads, scale)


def projected_linear_attention(x, w_qkv, heads, scale):
    """``linear_attention(conv1x1(x, w_qkv), heads, scale)``, the blog's ``to_qkv`` and core;
    see :func:`reference.projected_linear_attention`.

    On the CPU one kernel projects each (sample, head) in cache, so the qkv tensor (three
    times the output) never reaches memory; elsewhere the projection runs as a GEMM before
    :func:`linear_attention`. x: (B, C, H, W), NCHW or channels_last; w_qkv:
    (3 * heads * dim_head, C, 1, 1) -> (B, heads * dim_head, H, W), NCHW.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        # Under autocast the weight stays float32 while x is 16-bit; autocast would cast it for
        # the blog's to_qkv convolution too, and the kernel takes one dtype.
        w_qkv = w_qkv.to(x.dtype)
    if covered("projected_linear_attention", x, w_qkv) and x.device.type == "cpu" and x.dim() == 4:
        if policy.cpu_attention_backward_is_slower(x, w_qkv):
            return reference.projected_linear_attention(x, w_qkv, heads, scale)
        if not policy.cpu_projects_inside_the_kernel(x):
            return linear_attention(pointwise_conv.conv1x1(x, w_qkv), heads, scale)
        return torch.ops.ddpm_fast.projected_linear_attention(x, w_qkv, heads, scale)
    return linear_attention(pointwise_conv.conv1x1(x, w_qkv), heads, scale)


def register(namespace):
    """The fake kernels of both attention ops and their backwards, and the autograd formulas."""
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::linear_attention")
    def _(qkv, heads, scale):
        b, c3, h, w = qkv.shape
        return qkv.new_empty((b, c3 // 3, h, w))

    @torch.library.register_fake(f"{namespace}::linear_attention_backward")
    def _(grad_out, qkv, heads, scale):
        return qkv.new_empty(qkv.shape)

    @torch.library.register_fake(f"{namespace}::projected_linear_attention")
    def _(x, w_qkv, heads, scale):
        b, _, h, w = x.shape
        return x.new_empty((b, w_qkv.shape[0] // 3, h, w))

    @torch.library.register_fake(f"{namespace}::projected_linear_attention_backward")
    def _(grad_out, x, w_qkv, heads, scale):
        b, _, h, w = x.shape
        return x.new_empty((b, w_qkv.shape[0], h, w))

    def core_setup(ctx, inputs, output):
        qkv, heads, scale = inputs
        ctx.heads, ctx.scale = heads, scale
        ctx.save_for_backward(qkv)

    def core_backward(ctx, grad_out):
        (qkv,) = ctx.saved_tensors
        grad = lib.linear_attention_backward(grad_out.contiguous(), qkv, ctx.heads, ctx.scale)
        return grad, None, None

    torch.library.register_autograd(f"{namespace}::linear_attention", core_backward, setup_context=core_setup)

    def projected_setup(ctx, inputs, output):
        x, w_qkv, heads, scale = inputs
        ctx.heads, ctx.scale = heads, scale
        ctx.save_for_backward(x, w_qkv)

    def projected_backward(ctx, grad_out):
        # The kernel recomputes q, k, v in cache and returns the gradient of the qkv the forward
        # never stored; the projection's two gradients are batched GEMMs from there.
        x, w_qkv = ctx.saved_tensors
        grad_qkv = lib.projected_linear_attention_backward(grad_out, x, w_qkv, ctx.heads, ctx.scale)
        b, c, h, w = x.shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            w2d = w_qkv.reshape(w_qkv.shape[0], c)
            grad_x = pointwise_conv.conv1x1(grad_qkv, w2d.t(),
                                            channels_last_out=kernel_format(x) == torch.channels_last)
        if ctx.needs_input_grad[1]:
            # sum_b grad_qkv[b] (O, HW) @ x[b]^T (HW, C); x as (B, HW, C) is a view in either
            # layout, so nothing is copied (einsum permuted grad_qkv into a copy first).
            x_t = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
            grad_w = torch.bmm(grad_qkv.reshape(b, w_qkv.shape[0], h * w), x_t).sum(0).reshape(w_qkv.shape)
        return grad_x, grad_w, None, None

    torch.library.register_autograd(f"{namespace}::projected_linear_attention", projected_backward,
                                    setup_context=projected_setup)
