"""The fused modules that :func:`ddpm_fast.model.accelerate.accelerate` swaps into a U-Net.

The fused modules keep the parameter names of the modules they replace (``nn.GroupNorm``'s
``weight``/``bias``, the blog's ``proj``/``norm``/``to_qkv``/``to_out``) and share their
parameter tensors, so ``state_dict`` keys and optimizer state are untouched. Whatever a kernel
does not cover runs the pure-PyTorch reference (see :mod:`ddpm_fast.ops.policy`).
"""

import torch
from torch import nn

from .. import ops


class FusedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` followed by an optional activation, in one fused op.

    Same constructor and parameters as ``nn.GroupNorm`` plus ``act`` ('none', 'silu' or
    'gelu'). ``forward(x, scale_shift=None)``: x (N, C, H, W), NCHW or channels_last;
    ``scale_shift``: optional pair of (N, C) or (N, C, 1, 1) tensors applied as
    ``y * (scale + 1) + shift`` between the norm and the activation. Inputs the compiled
    kernels do not cover (other devices or dtypes, other ranks) run the reference.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, act="none",
                 device=None, dtype=None):
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.act = act

    @classmethod
    def from_group_norm(cls, norm, act="none"):
        """A FusedGroupNorm sharing ``norm``'s parameters (no copy)."""
        fused = cls(norm.num_groups, norm.num_channels, norm.eps, affine=False, act=act)
        fused.weight, fused.bias = norm.weight, norm.bias
        return fused

    def extra_repr(self):
        return f"{super().extra_repr()}, act={self.act!r}"

    def forward(self, x, scale_shift=None):
        scale = shift = None
        if scale_shift is not None:
            scale, shift = (s.reshape(x.shape[0], x.shape[1]) for s in scale_shift)
        return ops.group_norm_act(x, self.num_groups, self.weight, self.bias, scale, shift,
                                  self.eps, self.act)


class FusedBlock(nn.Module):
    """The blog's ``Block`` (3x3 conv, GroupNorm, scale/shift, SiLU) with the norm, scale/shift
    and SiLU fused. Holds the original ``proj`` and a FusedGroupNorm sharing ``norm``'s weights.
    ``act`` stays as a parameter-free module so the module tree keeps the blog's names.

    x: (B, dim, H, W) -> (B, dim_out, H, W).
    """

    def __init__(self, proj, norm, act):
        super().__init__()
        self.proj = proj
        self.norm = FusedGroupNorm.from_group_norm(norm, act="silu")
        self.act = act

    def forward(self, x, scale_shift=None):
        return self.norm(self.proj(x), scale_shift)


class FusedLinearAttention(nn.Module):
    """The blog's ``LinearAttention`` with ``to_qkv`` and its core (two softmaxes, two
    contractions) in one op, ``to_out``'s 1x1 convolution as a GEMM and its GroupNorm fused.

    Keeps ``to_qkv`` (Conv2d, 1x1, no bias) and ``to_out`` (Sequential of a 1x1 Conv2d and a
    GroupNorm(1)) under their names. x: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, to_qkv, to_out, heads, scale):
        super().__init__()
        self.heads = heads
        self.scale = scale
        self.to_qkv = to_qkv
        conv, norm = to_out
        self.to_out = nn.Sequential(conv, FusedGroupNorm.from_group_norm(norm))

    def forward(self, x):
        out = ops.projected_linear_attention(x, self.to_qkv.weight, self.heads, self.scale)
        conv, norm = self.to_out
        # Back in x's layout, so a channels_last U-Net stays channels_last after the residual.
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return norm(ops.conv1x1(out, conv.weight, conv.bias, channels_last))
