"""Convolutions whose CPU inference forward runs oneDNN on a weight reordered once.

``nn.Conv2d`` on the CPU hands oneDNN a plain weight, which oneDNN reorders into its blocked
layout at every call, and at batch 1 torch skips oneDNN for small inputs and runs im2col and
a GEMM instead. Inductor's freezing packs the weight once (``mkldnn._reorder_convolution_weight``
and ``mkldnn._convolution_pointwise``); these modules do the same in eager mode, for the
calls that need no gradient: sampling. Everything else (training, other devices, tracing and
compiling, string padding) runs the parent class's forward.

The packed weight is a cache, not state: ``state_dict``, ``deepcopy`` and pickling see the
parent class's parameters only, and an in-place change of the weight (an optimizer step,
``load_state_dict``) or a new dtype or device makes the next call pack it again.
"""

import torch
from torch import nn

from ..ops import policy

# Packed weights kept per module, one per input shape (oneDNN picks its layout by shape).
# More shapes than this in turn (a sweep over batch sizes) drops the old ones.
MAX_PACKED_SHAPES = 4


def _channels_last(t):
    """Whether t is channels_last and not also NCHW (one channel, or 1x1 pixels, is both)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _compute_dtype(x, weight):
    """The dtype oneDNN would compute in, as F.conv2d would here, or None where we do not pack.

    Under CPU autocast to bf16 the conv runs in bf16, as autocast's conv policy does; otherwise
    x and the weight must agree, in float32 or bf16."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype == torch.bfloat16 and weight.dtype in (torch.float32, torch.bfloat16) else None
    if x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16):
        return x.dtype
    return None


class _PrepackedConv:
    """What both modules share: when to pack, and the cache of packed weights."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_cache()

    @classmethod
    def from_conv(cls, conv):
        """The packed module sharing ``conv``'s parameters (no copy); conv is of the parent class."""
        packed = cls.__new__(cls)
        packed.__dict__.update(conv.__dict__)
        packed._init_cache()
        return packed

    def _init_cache(self):
        self._packed = {}
        self._packed_for = None

    def __getstate__(self):
        # oneDNN's packed tensors have no storage to copy or pickle; the next call repacks.
        state = dict(super().__getstate__())
        state["_packed"], state["_packed_for"] = {}, None
        return state

    def _packed_call(self, x):
        """(packed weight, bias in the compute dtype) for this call, or None where it runs the
        parent's forward: anything but a plain CPU inference call."""
        weight, bias = self.weight, self.bias
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return None
        if (type(x) is not torch.Tensor or not x.is_cpu or x.dim() != 4 or not weight.is_cpu
                or x.shape[0] == 0  # F.conv2d's empty output has its own strides
                # oneDNN's packed path writes channels_last; where F.conv2d would not, keep F.conv2d
                or not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
                or not (_channels_last(x) or _channels_last(weight))
                or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or torch.compiler.is_compiling() or torch.jit.is_tracing()
                or not policy.cpu_prepacks_convolutions()):
            return None
        dtype = _compute_dtype(x, weight)
        if dtype is None or weight.is_inference() or (bias is not None and bias.is_inference()):
            return None  # inference tensors have no version counter to watch
        owner = (weight.data_ptr(), weight._version, dtype) + (
            () if bias is None else (bias.data_ptr(), bias._version))
        if self._packed_for != owner:
            self._packed, self._packed_for = {}, owner
        shape = tuple(x.shape)
        call = self._packed.get(shape)
        if call is None:
            if len(self._packed) >= MAX_PACKED_SHAPES:
                self._packed.clear()
            with torch.no_grad():
                packed = self._pack(weight.detach().to(dtype), list(shape))
                call = (packed, None if bias is None else bias.detach().to(dtype))
            self._packed[shape] = call
        return call


class PrepackedConv2d(_PrepackedConv, nn.Conv2d):
    """``nn.Conv2d`` whose CPU inference forward runs oneDNN on a packed weight.

    Same constructor, parameters and ``state_dict`` as ``nn.Conv2d``; see the module docstring
    for when the packed path runs. x: (N, C_in, H, W) -> (N, C_out, H_out, W_out), in the
    layout ``F.conv2d`` gives.
    """

    def _pack(self, weight, input_size):
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(self.padding), list(self.stride), list(self.dilation), self.groups, input_size)

    def forward(self, x):
        call = self._packed_call(x)
        if call is None:
            return super().forward(x)
        weight, bias = call
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(weight.dtype), weight, bias, self.padding, self.stride, self.dilation,
            self.groups, "none", [], "")


class PrepackedConvTranspose2d(_PrepackedConv, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose CPU inference forward runs oneDNN on a packed weight.

    Same constructor, parameters and ``state_dict`` as ``nn.ConvTranspose2d``; a call with
    ``output_size`` runs the parent's forward. x: (N, C_in, H, W) -> (N, C_out, H_out, W_out).
    """

    def _pack(self, weight, input_size):
        return torch.ops.mkldnn._reorder_convolution_transpose_weight(
            weight, list(self.padding), list(self.output_padding), list(self.stride),
            list(self.dilation), self.groups, input_size)

    def forward(self, x, output_size=None):
        call = self._packed_call(x) if output_size is None else None
        if call is None:
            return super().forward(x, output_size)
        weight, bias = call
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x.to(weight.dtype), weight, bias, self.padding, self.output_padding, self.stride,
            self.dilation, self.groups, "none", [], "")
