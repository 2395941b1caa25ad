"""Checkpoints: written atomically, read back, and turned into a model again."""

import os
import tempfile
from pathlib import Path

import torch

from ..diffusion import GaussianDiffusion
from ..model import Unet

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path, state):
    """Write ``state`` with torch.save to a temporary file, then rename it over ``path``, so a
    crash mid-write never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            # On disk before the rename: else a power cut may keep the rename, not the data.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint written by :func:`train`; returns its dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with 'ddpm-fast train'")
    return torch.load(path, map_location=device, weights_only=True)


def model_from_checkpoint(checkpoint, device="cpu", use_ema=True):
    """Rebuild (model, diffusion, image_size) from a checkpoint dict, EMA weights if present."""
    model = Unet(**checkpoint["unet"]).to(device)
    weights = checkpoint.get("ema") if use_ema and checkpoint.get("ema") else checkpoint["model"]
    model.load_state_dict(weights)
    model.eval()
    diffusion = GaussianDiffusion(**checkpoint["diffusion"]).to(device)
    return model, diffusion, checkpoint["image_size"]
