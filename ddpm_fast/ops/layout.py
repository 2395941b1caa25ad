"""The memory formats the kernels return, for the fake kernels (csrc/checks.h holds the C++ twin)."""

import torch


def kernel_format(x):
    """The kernels keep channels_last inputs channels_last and make everything else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def per_sample_format(x, *others):
    """The per-sample (elementwise) kernels keep x's layout when every other input shares its
    strides, else compute in contiguous memory. ``others`` are the inputs present (no None)."""
    if x.dim() == 4 and all(o.stride() == x.stride() for o in others):
        return kernel_format(x)
    return torch.contiguous_format
