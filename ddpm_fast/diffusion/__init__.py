"""The diffusion: beta schedules, GaussianDiffusion (q_sample, the loss, the sampling loop) and
the samplers, which hold the only step tables.

    from ddpm_fast.diffusion import GaussianDiffusion, DDIMSampler
    diffusion = GaussianDiffusion(timesteps=200)
    images = diffusion.sample(model, image_size=28, channels=1, sampler=DDIMSampler(steps=50))
"""

from .gaussian_diffusion import LOSS_TYPES, GaussianDiffusion
from .samplers import (DEFAULT_TIMESTEP_SPACING, PREDICTION_TYPES, SAMPLERS, TIMESTEP_SPACINGS, DDIMSampler,
                       DDPMSampler, DPMSolverPlusPlusSampler, Sampler, SDEDPMSolverPlusPlusSampler, make_sampler)
from .schedules import (BETA_SCHEDULES, cosine_beta_schedule, linear_beta_schedule, make_beta_schedule,
                        quadratic_beta_schedule, sigmoid_beta_schedule)

__all__ = [
    "BETA_SCHEDULES", "DDIMSampler", "DDPMSampler", "DEFAULT_TIMESTEP_SPACING", "DPMSolverPlusPlusSampler",
    "GaussianDiffusion", "LOSS_TYPES", "PREDICTION_TYPES", "SAMPLERS", "SDEDPMSolverPlusPlusSampler", "Sampler", "TIMESTEP_SPACINGS", "cosine_beta_schedule",
    "linear_beta_schedule", "make_beta_schedule", "make_sampler", "quadratic_beta_schedule",
    "sigmoid_beta_schedule",
]
