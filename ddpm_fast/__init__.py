"""ddpm_fast: a faithful DDPM ("The Annotated Diffusion Model") with compiled fused ops.

    import ddpm_fast
    model = ddpm_fast.Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    diffusion = ddpm_fast.GaussianDiffusion(timesteps=200)
    ddpm_fast.accelerate(model)          # swap in the fused ops; state_dict unchanged
    samples = diffusion.sample(model, image_size=28, batch_size=16, channels=1,
                               sampler=ddpm_fast.DDIMSampler(steps=50))

The package, by concern: ``model`` (the U-Net, the fused modules, accelerate), ``diffusion``
(schedules, GaussianDiffusion, samplers), ``ops`` (the compiled ops and their references),
``train``, ``evaluate`` (FD, pictures), ``data`` and ``cli``.
"""

from .diffusion import (DDIMSampler, DDPMSampler, DPMSolverPlusPlusSampler, GaussianDiffusion,
                        SDEDPMSolverPlusPlusSampler,
                        cosine_beta_schedule, linear_beta_schedule, quadratic_beta_schedule,
                        sigmoid_beta_schedule)
from .model import Unet, accelerate
from .ops import compiled_backends, compiled_ops_loaded
from .ops.cpu_report import cpu_report, format_cpu_report

__version__ = "0.1.0"

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPlusPlusSampler", "SDEDPMSolverPlusPlusSampler",
    "GaussianDiffusion",
    "accelerate",
    "Unet",
    "compiled_backends",
    "compiled_ops_loaded",
    "cpu_report",
    "format_cpu_report",
    "cosine_beta_schedule",
    "linear_beta_schedule",
    "quadratic_beta_schedule",
    "sigmoid_beta_schedule",
]
