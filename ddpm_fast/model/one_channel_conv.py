"""A 1-channel-input convolution that inductor's freezing compiles right at every batch size.

With ``torch._inductor.config.freezing = True``, ``torch.compile`` of a channels_last U-Net
whose first convolution reads 1-channel images ran batch 1, then failed on the dynamic-batch
recompile (b4, b64) with a stride AssertionError in ``mkldnn._convolution_pointwise``
(torch 2.13). Inductor assumes (``torch/_inductor/mkldnn_ir.py``) that under dynamic shapes a
conv of an input that is "contiguous" returns contiguous output; a (B, 1, H, W) input is both
NCHW and channels_last, and the real kernel, given channels_last weights (which freezing makes
them), returns channels_last. The reference U-Net made channels_last fails the same way.

Under compilation only, the input gets a second, zero channel and the weight a zero input
channel: the result is the same sum (plus exact zeros), and a 2-channel input is no longer
ambiguous, so inductor and the kernel agree. Eager calls run the plain convolution.
"""

import torch
import torch.nn.functional as F
from torch import nn


class OneChannelConv2d(nn.Conv2d):
    """``nn.Conv2d`` with ``in_channels == 1`` and ``groups == 1``, same parameters; see the module
    docstring. x: (B, 1, H, W) -> (B, out_channels, H', W')."""

    @classmethod
    def from_conv(cls, conv):
        """A OneChannelConv2d sharing ``conv``'s parameters (no copy)."""
        new = cls(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  bias=False, padding_mode=conv.padding_mode, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def forward(self, x):
        if not torch.compiler.is_compiling() or self.padding_mode != "zeros":
            return super().forward(x)
        x = torch.cat([x, torch.zeros_like(x)], dim=1)
        weight = torch.cat([self.weight, torch.zeros_like(self.weight)], dim=1)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)
