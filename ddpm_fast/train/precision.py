"""Mixed precision for training: ``--precision fp32 | bf16 | fp16``.

bf16 and fp16 run the forward pass under ``torch.autocast``; the weights, the optimizer and
the gradients stay float32. fp16 also scales the loss with a ``GradScaler``, because its
small gradients would otherwise underflow to zero; bf16 has float32's range and needs none.

Under autocast the fused ops see 16-bit activations and float32 parameters. On CUDA their
kernels take both 16-bit types; on the CPU they cover float32/float64 only, so a bf16 or fp16
activation runs the pure-PyTorch reference of that op (see :mod:`ddpm_fast.ops`).
"""

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not known; choose one of {PRECISIONS}")


def autocast(device, precision):
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    check_precision(precision)
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES.get(precision, torch.float32),
                          enabled=precision != "fp32")


def grad_scaler(device, precision):
    """A GradScaler, enabled for fp16 only (disabled, its step() is a plain optimizer step)."""
    check_precision(precision)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
