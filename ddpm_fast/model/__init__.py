"""The model: the blog's U-Net (the blog's module names), the fused modules, and accelerate()."""

from .accelerate import accelerate
from .fused import FusedBlock, FusedGroupNorm, FusedLinearAttention
from .prepacked_conv import PrepackedConv2d, PrepackedConvTranspose2d
from .unet import Unet

__all__ = ["FusedBlock", "FusedGroupNorm", "FusedLinearAttention", "PrepackedConv2d",
           "PrepackedConvTranspose2d", "Unet", "accelerate"]
