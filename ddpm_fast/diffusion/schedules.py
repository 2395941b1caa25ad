"""The blog's beta schedules. Each returns ``betas: (timesteps,)`` in float64.

They are computed in float64 so that the derived quantities (cumulative products, square
roots, posterior variance) lose nothing before :class:`~ddpm_fast.GaussianDiffusion` stores
them as float32 buffers.
"""

import math

import torch


def cosine_beta_schedule(timesteps, s=0.008):
    """Cosine schedule as proposed in https://arxiv.org/abs/2102.09672."""
    steps = timesteps + 1
    x = torch.linspace(0, timesteps, steps, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0.0001, 0.9999)


def linear_beta_schedule(timesteps):
    """Linear from 1e-4 to 0.02, as in the DDPM paper."""
    return torch.linspace(0.0001, 0.02, timesteps, dtype=torch.float64)


def quadratic_beta_schedule(timesteps):
    """Linear in sqrt(beta) from sqrt(1e-4) to sqrt(0.02)."""
    return torch.linspace(0.0001**0.5, 0.02**0.5, timesteps, dtype=torch.float64) ** 2


def sigmoid_beta_schedule(timesteps):
    """Sigmoid of a linear ramp over [-6, 6], rescaled to [1e-4, 0.02]."""
    betas = torch.linspace(-6, 6, timesteps, dtype=torch.float64)
    return torch.sigmoid(betas) * (0.02 - 0.0001) + 0.0001


BETA_SCHEDULES = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "quadratic": quadratic_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}


def make_beta_schedule(name, timesteps):
    """Betas of the schedule called ``name`` (one of ``BETA_SCHEDULES``), float64, (timesteps,)."""
    if name not in BETA_SCHEDULES:
        raise ValueError(
            f"beta_schedule={name!r} is not known; choose one of {sorted(BETA_SCHEDULES)}"
        )
    if not isinstance(timesteps, int) or timesteps < 2:
        raise ValueError(f"timesteps must be an integer >= 2, got {timesteps!r}")
    return BETA_SCHEDULES[name](timesteps)
