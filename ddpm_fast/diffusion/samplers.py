"""The samplers of a trained noise model: DDPM's ancestral sampler, DDIM and DPM-Solver++(2M).

Each sampler is a small object in the shape of a diffusers scheduler, built with its settings
(``DDIMSampler(steps=50, eta=0.0)``) and passed to ``GaussianDiffusion.sample(..., sampler=...)``.
``set_schedule(alphas_cumprod)`` (the diffusion calls it) fixes its grid of S model timesteps and
computes, once and in float64, an (S, 6) table of per-step coefficients; ``step`` is then one
update with no host sync. Every
sampler's step is the same affine update of the current sample ``x``, the model's predicted
noise ``eps``, the previous step's prediction of the clean image ``prev_x0`` and fresh noise::

    x0     = c[4] * x + c[5] * eps                                      (the data prediction)
    x_next = c[0] * x + c[1] * eps + c[2] * prev_x0 + c[3] * noise

with ``c`` the step's row of the table (columns ``COEFFICIENTS``), so all three share one fused
op, :func:`ddpm_fast.ops.sampler_update`. Rows differ only in what the sampler's maths puts in
them; a first-order step has ``c[2] == 0``, a deterministic one ``c[3] == 0``.

Timestep grids follow diffusers' ``timestep_spacing`` (each scheduler's own: DDIM's
"linspace" includes t = 0, DPM-Solver++'s does not). The last DDIM step goes to
alpha_bar = 1 (diffusers' ``set_alpha_to_one=True``) and DPM-Solver++ ends at sigma = 0, so both
return their final data prediction.
"""

import numbers

import numpy as np
import torch

from .. import ops
from ..ops import reference

SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# Chosen by measurement (README, "Few-step samplers and sample quality"): on the digits model
# "trailing" gives DDIM its lowest Fréchet distance at 10 and 20 steps and ties "linspace" for
# DPM-Solver++; "leading" is the worst for both, as its first step is not T - 1, where the
# starting noise lives.
DEFAULT_TIMESTEP_SPACING = "trailing"
COEFFICIENTS = ("x", "eps", "prev_x0", "noise", "x0_from_x", "x0_from_eps")


def check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")


def check_timestep_spacing(timestep_spacing):
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(
            f"timestep_spacing={timestep_spacing!r} is not known; choose one of {TIMESTEP_SPACINGS}"
        )


def ddim_timesteps(num_train_timesteps, steps, timestep_spacing):
    """DDIM's grid (diffusers' ``DDIMScheduler.set_timesteps``): (steps,) int64, decreasing.

    'leading': multiples of T // steps from 0; 'trailing': T - 1 down in steps of T / steps;
    'linspace': ``steps`` rounded points from T - 1 to 0, both included.
    """
    T = num_train_timesteps
    if timestep_spacing == "linspace":
        grid = np.linspace(0, T - 1, steps).round()[::-1]
    elif timestep_spacing == "leading":
        grid = (np.arange(0, steps) * (T // steps)).round()[::-1]
    else:
        grid = np.round(np.arange(T, 0, -T / steps)) - 1
    return torch.from_numpy(grid.astype(np.int64).copy())


def dpm_solver_timesteps(num_train_timesteps, steps, timestep_spacing):
    """DPM-Solver++'s grid (diffusers' ``DPMSolverMultistepScheduler.set_timesteps``):
    (steps,) int64, decreasing; t = 0 is never on it, as the solver ends at sigma = 0.

    'leading': multiples of T // (steps + 1) from above 0; 'trailing': as DDIM's;
    'linspace': ``steps + 1`` rounded points from T - 1 to 0, without the 0.
    """
    T = num_train_timesteps
    if timestep_spacing == "linspace":
        grid = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
    elif timestep_spacing == "leading":
        grid = (np.arange(0, steps + 1) * (T // (steps + 1))).round()[::-1][:-1]
    else:
        grid = np.arange(T, 0, -T / steps).round() - 1
    return torch.from_numpy(grid.astype(np.int64).copy())


class Sampler:
    """Base of the samplers: its settings, and for a diffusion's schedule the grid of model
    timesteps and its (S, 6) coefficient table.

    Args:
        steps: S, the number of model evaluations; None for all T steps of the schedule.
        timestep_spacing: 'leading', 'trailing' or 'linspace', as in diffusers.

    After :meth:`set_schedule`: ``timesteps`` (S,) int64 on the CPU, the model's timestep at
    each step, and ``coefficients`` (S, 6) float64, one row per step (columns
    ``COEFFICIENTS``). ``uses_noise``/``uses_prev_x0`` say whether ``step`` needs fresh noise
    or the previous step's x0; the sampling loop passes None otherwise and the op skips them.
    """

    name = None
    uses_noise = False
    uses_prev_x0 = False

    def __init__(self, steps=None, timestep_spacing=DEFAULT_TIMESTEP_SPACING):
        check_timestep_spacing(timestep_spacing)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
            raise ValueError(f"steps must be a positive integer, or None for all T steps, for "
                             f"sampler={self.name!r}, got {steps!r}")
        self.steps = None if steps is None else int(steps)
        self.timestep_spacing = timestep_spacing
        self.alphas_cumprod = None
        self.timesteps = None
        self.coefficients = None
        self._device_tables = {}

    def __repr__(self):
        return (f"{type(self).__name__}(steps={self.steps}, "
                f"timestep_spacing={self.timestep_spacing!r}{self._extra_repr()})")

    def _extra_repr(self):
        return ""

    @property
    def num_steps(self):
        """S, the number of model evaluations (known once :meth:`set_schedule` ran)."""
        return None if self.timesteps is None else self.timesteps.shape[0]

    def settings(self):
        """The settings as a dict for a record: sampler, steps (S), eta and timestep_spacing."""
        return {"sampler": self.name, "steps": self.num_steps or self.steps, "eta": 0.0,
                "timestep_spacing": self.timestep_spacing}

    def set_schedule(self, alphas_cumprod):
        """Fix the grid of timesteps and compute the coefficient table (float64) for a
        diffusion's ``alphas_cumprod`` (T,) float64; does nothing when already set for it."""
        alphas_cumprod = alphas_cumprod.to(torch.float64)
        if self.alphas_cumprod is not None and torch.equal(self.alphas_cumprod, alphas_cumprod):
            return self
        T = alphas_cumprod.shape[0]
        steps = T if self.steps is None else self.steps
        if steps > T:
            raise ValueError(f"steps must be an integer in [1, {T}] for sampler={self.name!r}, got {steps!r}")
        self.alphas_cumprod = alphas_cumprod
        timesteps = self._timesteps(steps, self.timestep_spacing)
        if timesteps.shape[0] != steps or not (timesteps[:-1] > timesteps[1:]).all() or timesteps.min() < 0:
            self.alphas_cumprod = None
            raise ValueError(
                f"steps={steps} with timestep_spacing={self.timestep_spacing!r} does not give {steps} distinct "
                f"timesteps in [0, {T}) for sampler={self.name!r}; use fewer steps or another spacing"
            )
        self.timesteps = timesteps
        self.coefficients = self._coefficients(timesteps)
        self._device_tables = {}
        return self

    @property
    def num_train_timesteps(self):
        return self.alphas_cumprod.shape[0]

    def tables(self, device, dtype=torch.float32):
        """The coefficient table on ``device`` for samples of ``dtype``: float64 for float64
        samples, else float32. Copied to each device once, then cached."""
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        key = (torch.device(device), table_dtype)
        if key not in self._device_tables:
            self._device_tables[key] = self.coefficients.to(device=device, dtype=table_dtype)
        return self._device_tables[key]

    def step(self, x, eps, step, prev_x0=None, noise=None, fused=True):
        """One update: ``x, eps, prev_x0, noise: (B, C, H, W)``, ``step: (B,)`` int64 row of the
        table (on x's device) -> ``(x_next, x0)``, both (B, C, H, W).

        ``fused=False`` runs the pure-PyTorch reference of the same update.
        """
        impl = ops if fused else reference
        return impl.sampler_update(x, eps, prev_x0, noise, step, self.tables(x.device, x.dtype))

    def _betas(self, t):
        """beta_t = 1 - abar_t / abar_{t-1} (abar_{-1} = 1), from the one alphas_cumprod."""
        abar_prev = torch.where(t > 0, self.alphas_cumprod[(t - 1).clamp(min=0)], 1.0)
        return 1.0 - self.alphas_cumprod[t] / abar_prev

    def _x0_columns(self, t):
        """x0 = (x - sqrt(1 - abar_t) * eps) / sqrt(abar_t), as (x, eps) coefficients."""
        abar = self.alphas_cumprod[t]
        return 1.0 / abar.sqrt(), -(1.0 - abar).sqrt() / abar.sqrt()

    def _timesteps(self, steps, timestep_spacing):
        raise NotImplementedError

    def _coefficients(self, timesteps):
        raise NotImplementedError


class DDPMSampler(Sampler):
    """The blog's ancestral sampler (DDPM algorithm 2) over all T steps, T - 1 down to 0:
    ``x_prev = (x - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) + sigma_t * noise`` with
    the posterior's sigma_t (0 at t = 0). Every spacing gives the same grid of all T steps."""

    name = "ddpm"
    uses_noise = True

    def _timesteps(self, steps, timestep_spacing):
        if steps != self.num_train_timesteps:
            raise ValueError(
                f"sampler='ddpm' runs all {self.num_train_timesteps} steps (steps=None or "
                f"{self.num_train_timesteps}), got steps={steps}; use sampler='ddim' or "
                "'dpm-solver++' for fewer"
            )
        return torch.arange(steps - 1, -1, -1, dtype=torch.int64)

    def _coefficients(self, timesteps):
        betas, abar = self._betas(timesteps), self.alphas_cumprod[timesteps]
        abar_prev = torch.where(timesteps > 0, self.alphas_cumprod[(timesteps - 1).clamp(min=0)], 1.0)
        sqrt_recip_alpha = 1.0 / (1.0 - betas).sqrt()
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        table = torch.zeros(len(timesteps), len(COEFFICIENTS), dtype=torch.float64)
        table[:, 0] = sqrt_recip_alpha
        table[:, 1] = -sqrt_recip_alpha * betas / (1.0 - abar).sqrt()
        table[:, 3] = posterior_variance.sqrt()
        table[:, 4], table[:, 5] = self._x0_columns(timesteps)
        return table


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eqs. 12 and 16) with noise scale ``eta`` in [0, 1]: each step
    goes from t to the next timestep of its grid, the last one to alpha_bar = 1.

    ``x_s = sqrt(abar_s) * x0 + sqrt(1 - abar_s - sigma^2) * eps + sigma * noise`` with
    ``sigma = eta * sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))``. eta = 0 is
    deterministic; eta = 1 over all T steps is the DDPM posterior.

    Unlike diffusers' DDIMScheduler, which always steps to t - T // steps, this steps to the
    grid's next timestep: the two agree for 'leading' and for 'trailing' when steps divides T,
    and only this one is right for 'linspace', whose grid is not T // steps apart.
    """

    name = "ddim"

    def __init__(self, steps=None, eta=0.0, timestep_spacing=DEFAULT_TIMESTEP_SPACING):
        super().__init__(steps, timestep_spacing)
        check_eta(eta)
        self.eta = float(eta)
        self.uses_noise = self.eta > 0

    def _extra_repr(self):
        return f", eta={self.eta}"

    def settings(self):
        return {**super().settings(), "eta": self.eta}

    def _timesteps(self, steps, timestep_spacing):
        return ddim_timesteps(self.num_train_timesteps, steps, timestep_spacing)

    def _coefficients(self, timesteps):
        abar_t = self.alphas_cumprod[timesteps]
        abar_s = torch.cat([self.alphas_cumprod[timesteps[1:]], torch.ones(1, dtype=torch.float64)])
        sigma = self.eta * ((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)).sqrt()
        direction = (1.0 - abar_s - sigma**2).clamp(min=0.0).sqrt()
        x0_x, x0_eps = self._x0_columns(timesteps)
        table = torch.zeros(len(timesteps), len(COEFFICIENTS), dtype=torch.float64)
        table[:, 0] = abar_s.sqrt() * x0_x
        table[:, 1] = abar_s.sqrt() * x0_eps + direction
        table[:, 3] = sigma
        table[:, 4], table[:, 5] = x0_x, x0_eps
        return table


class DPMSolverPlusPlusSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022): the second-order multistep solver with data
    prediction, as diffusers' DPMSolverMultistepScheduler with ``algorithm_type="dpmsolver++"``,
    ``solver_order=2``, ``solver_type="midpoint"``: first order on the first step (no history)
    and on the last (to sigma = 0, where it returns its data prediction), second order between.

    With ``alpha_k = sqrt(abar)``, ``sigma_k = sqrt(1 - abar)``, ``lambda_k = log(alpha_k /
    sigma_k)``, ``h = lambda_{k+1} - lambda_k`` and ``r = h_{k-1} / h``::

        x_{k+1} = sigma_{k+1} / sigma_k * x + alpha_{k+1} * (1 - e^-h) * (x0 + (x0 - prev_x0) / (2 r))
    """

    name = "dpm-solver++"
    uses_prev_x0 = True

    def _timesteps(self, steps, timestep_spacing):
        return dpm_solver_timesteps(self.num_train_timesteps, steps, timestep_spacing)

    def _coefficients(self, timesteps):
        abar = torch.cat([self.alphas_cumprod[timesteps], torch.ones(1, dtype=torch.float64)])
        alpha, sigma = abar.sqrt(), (1.0 - abar).sqrt()
        lam = alpha.log() - sigma.log()  # +inf at the end, sigma = 0
        x0_x, x0_eps = self._x0_columns(timesteps)
        table = torch.zeros(len(timesteps), len(COEFFICIENTS), dtype=torch.float64)
        steps = len(timesteps)
        for k in range(steps):
            last = k == steps - 1
            # alpha_{k+1} * (1 - e^-h): at the end h = inf and alpha = 1, so the weight is 1.
            weight = 1.0 if last else float(alpha[k + 1] * -torch.expm1(-(lam[k + 1] - lam[k])))
            ratio = float(sigma[k + 1] / sigma[k])
            if k == 0 or last:
                on_x0, on_prev = weight, 0.0
            else:
                r = float((lam[k] - lam[k - 1]) / (lam[k + 1] - lam[k]))
                on_x0, on_prev = weight * (1.0 + 0.5 / r), -weight * 0.5 / r
            table[k, 0] = ratio + on_x0 * x0_x[k]
            table[k, 1] = on_x0 * x0_eps[k]
            table[k, 2] = on_prev
        table[:, 4], table[:, 5] = x0_x, x0_eps
        return table


def make_sampler(name, steps=None, eta=0.0, timestep_spacing=DEFAULT_TIMESTEP_SPACING):
    """The sampler called ``name`` (one of ``SAMPLERS``) with these settings: the string
    shorthand of ``sample(..., sampler="ddim", steps=50)``.

    ``steps=None`` means all T steps. ``eta`` is DDIM's noise scale; the other samplers take
    none (0).
    """
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not known; choose one of {SAMPLERS}")
    if name == "ddim":
        return DDIMSampler(steps, eta, timestep_spacing)
    check_eta(eta)
    if eta != 0:
        raise ValueError(f"eta is DDIM's noise scale; sampler={name!r} takes eta=0, got {eta!r}")
    return (DDPMSampler if name == "ddpm" else DPMSolverPlusPlusSampler)(steps, timestep_spacing)
