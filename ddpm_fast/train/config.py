"""TrainConfig, everything a training run depends on, and its checks.

The CLI's ``train`` flags are generated from this dataclass (cli.py), and every checkpoint
stores it, so a field added here is a flag and is recorded.
"""

import dataclasses

import torch

from ..diffusion import LOSS_TYPES, PREDICTION_TYPES
from .precision import check_precision


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None  # default: 16 for digits, 28 for Fashion-MNIST
    hflip: bool | None = None  # default: on for Fashion-MNIST, off for digits
    dim: int | None = None  # default: the image size, as in the seed
    dim_mults: tuple = (1, 2, 4)
    use_convnext: bool = True
    resnet_block_groups: int = 8
    timesteps: int = 200
    beta_schedule: str = "linear"
    loss_type: str = "huber"
    prediction_type: str = "epsilon"  # what the model learns to predict: epsilon (the blog's), sample, v_prediction
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting, e.g. 5.0; None weighs all timesteps alike
    batch_size: int = 128  # global: images per optimizer step, over all processes and grad_accum
    grad_accum: int = 1  # micro-batches per optimizer step, each of batch_size / (processes * grad_accum)
    precision: str = "fp32"  # fp32, or autocast to bf16 / fp16 (fp16 with a GradScaler)
    compile: bool = False  # torch.compile the (accelerated) model
    lr: float = 1e-3
    steps: int = 2000
    ema_decay: float | None = None  # e.g. 0.995; None disables EMA
    log_every: int = 100
    save_and_sample_every: int = 1000
    num_samples: int = 36
    seed: int = 0
    device: str | None = None  # default: cuda when available, else cpu
    accelerate: bool = True  # swap in the compiled fused ops when available
    out_dir: str = "results"
    dist_timeout_s: float = 600.0  # how long a rank waits for the others before the job fails


def pick_device(device=None):
    """The named device, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unet_kwargs(config, image_size):
    return dict(
        dim=config.dim or image_size,
        channels=1,
        dim_mults=tuple(config.dim_mults),
        use_convnext=config.use_convnext,
        resnet_block_groups=config.resnet_block_groups,
    )


def check_config(config):
    """Raise a ValueError naming the first setting of ``config`` that cannot work."""
    if config.loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={config.loss_type!r} is not known; choose one of {LOSS_TYPES}")
    if config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={config.prediction_type!r} is not known; choose one of {PREDICTION_TYPES}")
    if config.min_snr_gamma is not None and not config.min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be a number > 0, or None for no weighting, got {config.min_snr_gamma}")
    check_precision(config.precision)
    for name in ("batch_size", "grad_accum", "log_every", "save_and_sample_every", "num_samples"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.steps < 0:
        raise ValueError(f"steps must be >= 0, got {config.steps}")
    if not config.dist_timeout_s > 0:
        raise ValueError(f"dist_timeout_s must be a positive number of seconds, got {config.dist_timeout_s}")
