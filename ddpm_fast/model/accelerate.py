"""accelerate(): the only place that swaps the fused modules into a U-Net.

Modules are matched by their children, not by class, so a user's copy of the blog's classes is
accelerated too; the ``state_dict`` keys and the parameter tensors are unchanged.
"""

import torch
from torch import nn

from ..ops import policy
from .fused import FusedBlock, FusedGroupNorm, FusedLinearAttention
from .prepacked_conv import PrepackedConv2d, PrepackedConvTranspose2d


def _child_names(module):
    return set(module._modules)


def _is_block(m):
    """The blog's Block: proj (Conv2d), norm (GroupNorm), act (SiLU), nothing else."""
    return (
        _child_names(m) == {"proj", "norm", "act"}
        and isinstance(m.proj, nn.Conv2d)
        and type(m.norm) is nn.GroupNorm
        and isinstance(m.act, nn.SiLU)
    )


def _is_linear_attention(m):
    """The blog's LinearAttention: 1x1 to_qkv without bias, to_out = [1x1 Conv2d, GroupNorm]."""
    if _child_names(m) != {"to_qkv", "to_out"} or not hasattr(m, "heads") or not hasattr(m, "scale"):
        return False
    qkv, out = m.to_qkv, m.to_out
    return (
        isinstance(qkv, nn.Conv2d) and qkv.kernel_size == (1, 1) and qkv.bias is None
        and qkv.groups == 1 and qkv.stride == (1, 1) and qkv.padding == (0, 0)
        and isinstance(out, nn.Sequential) and len(out) == 2
        and isinstance(out[0], nn.Conv2d) and out[0].kernel_size == (1, 1) and out[0].groups == 1
        and out[0].stride == (1, 1) and out[0].padding == (0, 0)
        and type(out[1]) is nn.GroupNorm
        and qkv.out_channels % (3 * m.heads) == 0
    )


def _fused_replacement(m):
    """The fused module to put in place of ``m``, or None to recurse into it."""
    if _is_block(m):
        return FusedBlock(m.proj, m.norm, m.act)
    if _is_linear_attention(m):
        return FusedLinearAttention(m.to_qkv, m.to_out, m.heads, m.scale)
    if type(m) is nn.GroupNorm:  # PreNorm's and ConvNextBlock's norms
        return FusedGroupNorm.from_group_norm(m)
    return None


def _swap(module):
    count = 0
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        replacement = _fused_replacement(child)
        if replacement is None:
            count += _swap(child)
        else:
            module._modules[name] = replacement
            count += 1
    return count


_PREPACKED = {nn.Conv2d: PrepackedConv2d, nn.ConvTranspose2d: PrepackedConvTranspose2d}


def _prepack_convolutions(module):
    """Swap every plain Conv2d/ConvTranspose2d (the fused modules' too) for its prepacked
    subclass, sharing the parameters."""
    for name, child in list(module._modules.items()):
        packed = _PREPACKED.get(type(child))
        if packed is not None:
            module._modules[name] = packed.from_conv(child)
        elif child is not None:
            _prepack_convolutions(child)


def _to_channels_last(model):
    """``model.to(memory_format=torch.channels_last)``, except that a Conv2d with one input
    channel keeps its NCHW weight strides, which are channels_last-contiguous too.

    Such a conv's input, (B, 1, H, W), is both NCHW and channels_last. oneDNN picks the
    output layout from the input and the weight (channels_last if either suggests it), while
    inductor's freezing path (``mkldnn._convolution_pointwise`` with a dynamic batch) looks
    at the input alone and expects NCHW: with a (k*k, 1, k, 1)-strided weight the kernel
    returned channels_last and the batch-size recompile failed its stride assertion (issue
    18). With (k*k, k*k, k, 1) strides both sides say NCHW, as for an NCHW model, and
    freezing's own conversion pass leaves such a weight alone for the same reason.
    """
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 1:
            weight = module.weight
            weight.data = weight.data.clone(memory_format=torch.contiguous_format)


def accelerate(model, channels_last=None, prepack=None):
    """Swap the fused ops into a U-Net in place and return it.

    Works on :class:`ddpm_fast.Unet` and on any U-Net with the blog's structure (a user's copy
    of the blog's classes): modules are matched by their children, not by class. The
    ``state_dict`` keys and the parameter tensors are unchanged.

    Args:
        model: the U-Net (any ``nn.Module``; parts that match nothing are left alone).
        channels_last: store conv weights channels_last, so activations flow in that layout.
            Default: on for CPU models on processors with AVX2 or AVX-512, where oneDNN's
            convolutions are faster in it; off on baseline x86-64, where they are slower
            (see :data:`ddpm_fast.ops.policy.CPU_RULES`). A conv with one input channel
            keeps NCHW weight strides (channels_last-contiguous as well; see
            :func:`_to_channels_last`).
        prepack: swap the convolutions for :class:`PrepackedConv2d` and
            :class:`PrepackedConvTranspose2d`, whose CPU calls without gradients (sampling) run
            oneDNN on weights packed once. Default: on for CPU models where oneDNN is there and
            torch runs above its baseline level
            (:func:`ddpm_fast.ops.policy.cpu_prepacks_convolutions`).
    """
    _swap(model)
    param = next(model.parameters(), None)
    on_cpu = param is not None and param.device.type == "cpu"
    if channels_last is None:
        channels_last = on_cpu and policy.cpu_prefers_channels_last()
    if channels_last:
        _to_channels_last(model)
    if prepack is None:
        prepack = on_cpu and policy.cpu_prepacks_convolutions()
    if prepack:
        _prepack_convolutions(model)
    return model
