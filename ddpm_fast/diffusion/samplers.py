"""The samplers of a trained model: DDPM's ancestral sampler, DDIM, DPM-Solver++(2M) and its
stochastic form SDE-DPM-Solver++(2M).

Each sampler is a small object in the shape of a diffusers scheduler, built with its settings
(``DDIMSampler(steps=50, eta=0.0, clip_sample=True)``) and passed to
``GaussianDiffusion.sample(..., sampler=...)``. ``set_schedule(alphas_cumprod, prediction_type)``
(the diffusion calls it) fixes its grid of S model timesteps and computes, once and in float64,
an (S, 7) table of per-step coefficients; ``step`` is then one update with no host sync. Every
sampler's step is the same update of the current sample ``x``, the model's output ``m`` (the
predicted noise, clean image or v, by ``prediction_type``), the previous step's data prediction
``prev_x0`` and fresh noise::

    x0     = clip(c[5] * x + c[6] * m)                           (the data prediction)
    x_next = c[0] * x + c[1] * m + c[2] * x0 + c[3] * prev_x0 + c[4] * noise

with ``c`` the step's row of the table (columns ``COEFFICIENTS``), so all of them share one
fused op, :func:`ddpm_fast.ops.sampler_update`. ``clip`` is the identity, diffusers'
``clip_sample`` (x0 clamped to [-clip_sample_range, clip_sample_range]) or its dynamic
``thresholding`` (Imagen's per-sample quantile). Without clipping the table folds x0's terms
into x's and m's (``c[2] == 0``), so the seed's sampler keeps its exact arithmetic. A
first-order step has ``c[3] == 0``, a deterministic one ``c[4] == 0``.

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

SAMPLERS = ("ddpm", "ddim", "dpm-solver++", "sde-dpm-solver++")
# What the model predicts (diffusers' prediction_type): the noise (the seed's), the clean image,
# or v = sqrt(abar) * noise - sqrt(1 - abar) * x0 (Salimans & Ho 2022; lucidrains' default).
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# Chosen by measurement (README, "Few-step samplers and sample quality"): on the digits model
# "trailing" gives DDIM its lowest Fréchet distance at 10 and 20 steps and ties "linspace" for
# DPM-Solver++; "leading" is the worst for both, as its first step is not T - 1, where the
# starting noise lives.
DEFAULT_TIMESTEP_SPACING = "trailing"
COEFFICIENTS = ("x", "model_output", "x0", "prev_x0", "noise", "x0_from_x", "x0_from_model_output")
# What a sampler's maths writes per step: x_next in terms of x, the noise prediction eps, the
# (clipped) data prediction x0, prev_x0 and fresh noise; Sampler turns it into COEFFICIENTS.
_UPDATE_TERMS = ("x", "eps", "x0", "prev_x0", "noise")


def check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")


def check_prediction_type(prediction_type):
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} is not known; choose one of {PREDICTION_TYPES}")


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def _check_clipping(clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value):
    if clip_sample and thresholding:
        raise ValueError("clip_sample and thresholding are two ways to bound x0: set one of them")
    if clip_sample:
        _check_positive("clip_sample_range", clip_sample_range)
    if thresholding:
        ratio = dynamic_thresholding_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must lie in (0, 1], got {ratio!r}")
        _check_positive("sample_max_value", sample_max_value)


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
    timesteps and its (S, 7) coefficient table.

    Args:
        steps: S, the number of model evaluations; None for all T steps of the schedule.
        timestep_spacing: 'leading', 'trailing' or 'linspace', as in diffusers.
        clip_sample: clamp each step's data prediction x0 to [-clip_sample_range,
            clip_sample_range] (diffusers' ``clip_sample``; lucidrains' ``clip_denoised``).
        clip_sample_range: the clamp's bound, > 0.
        thresholding: Imagen's dynamic thresholding of x0 instead: per sample
            ``s = clamp(quantile(|x0|, dynamic_thresholding_ratio), 1, sample_max_value)``, then
            ``x0 = clamp(x0, -s, s) / s`` (diffusers' ``thresholding``).
        dynamic_thresholding_ratio: the quantile, in (0, 1].
        sample_max_value: the largest s, > 0.

    After :meth:`set_schedule`: ``timesteps`` (S,) int64 on the CPU, the model's timestep at
    each step, and ``coefficients`` (S, 7) float64, one row per step (columns
    ``COEFFICIENTS``). ``uses_noise``/``uses_prev_x0`` say whether ``step`` needs fresh noise
    or the previous step's x0; the sampling loop passes None otherwise and the op skips them.
    """

    name = None
    uses_noise = False
    uses_prev_x0 = False

    def __init__(self, steps=None, timestep_spacing=DEFAULT_TIMESTEP_SPACING, *, clip_sample=False,
                 clip_sample_range=1.0, thresholding=False, dynamic_thresholding_ratio=0.995,
                 sample_max_value=1.0):
        check_timestep_spacing(timestep_spacing)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
            raise ValueError(f"steps must be a positive integer, or None for all T steps, for "
                             f"sampler={self.name!r}, got {steps!r}")
        _check_clipping(clip_sample, clip_sample_range, thresholding, dynamic_thresholding_ratio, sample_max_value)
        self.steps = None if steps is None else int(steps)
        self.timestep_spacing = timestep_spacing
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)
        self.thresholding = bool(thresholding)
        self.dynamic_thresholding_ratio = float(dynamic_thresholding_ratio)
        self.sample_max_value = float(sample_max_value)
        self.alphas_cumprod = None
        self.prediction_type = None
        self.timesteps = None
        self.coefficients = None
        self._device_tables = {}

    def __repr__(self):
        return (f"{type(self).__name__}(steps={self.steps}, "
                f"timestep_spacing={self.timestep_spacing!r}{self._extra_repr()}{self._clipping_repr()})")

    def _extra_repr(self):
        return ""

    def _clipping_repr(self):
        if self.clip_sample:
            return f", clip_sample=True, clip_sample_range={self.clip_sample_range}"
        if self.thresholding:
            return (f", thresholding=True, dynamic_thresholding_ratio={self.dynamic_thresholding_ratio}, "
                    f"sample_max_value={self.sample_max_value}")
        return ""

    @property
    def bounds_x0(self):
        """Whether x0 is clipped or thresholded."""
        return self.clip_sample or self.thresholding

    @property
    def num_steps(self):
        """S, the number of model evaluations (known once :meth:`set_schedule` ran)."""
        return None if self.timesteps is None else self.timesteps.shape[0]

    def settings(self):
        """The settings as a dict for a record: sampler, steps (S), eta, timestep_spacing and
        how x0 is bounded."""
        settings = {"sampler": self.name, "steps": self.num_steps or self.steps, "eta": 0.0,
                    "timestep_spacing": self.timestep_spacing, "clip_sample": self.clip_sample,
                    "thresholding": self.thresholding}
        if self.clip_sample:
            settings["clip_sample_range"] = self.clip_sample_range
        if self.thresholding:
            settings.update(dynamic_thresholding_ratio=self.dynamic_thresholding_ratio,
                            sample_max_value=self.sample_max_value)
        return settings

    def set_schedule(self, alphas_cumprod, prediction_type="epsilon"):
        """Fix the grid of timesteps and compute the coefficient table (float64) for a
        diffusion's ``alphas_cumprod`` (T,) float64 and a model that predicts
        ``prediction_type`` ('epsilon', 'sample' or 'v_prediction'); does nothing when already
        set for both."""
        check_prediction_type(prediction_type)
        alphas_cumprod = alphas_cumprod.to(torch.float64)
        if (self.alphas_cumprod is not None and torch.equal(self.alphas_cumprod, alphas_cumprod)
                and self.prediction_type == prediction_type):
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
        self.prediction_type = prediction_type
        self.timesteps = timesteps
        self.coefficients = self._table(self._update(timesteps), timesteps)
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

    def clipping_args(self):
        """The op's (clip_sample_range, dynamic_thresholding_ratio, sample_max_value); 0 is off."""
        return (self.clip_sample_range if self.clip_sample else 0.0,
                self.dynamic_thresholding_ratio if self.thresholding else 0.0, self.sample_max_value)

    def step(self, x, model_output, step, prev_x0=None, noise=None, fused=True):
        """One update: ``x, model_output, prev_x0, noise: (B, C, H, W)``, ``step: (B,)`` int64
        row of the table (on x's device) -> ``(x_next, x0)``, both (B, C, H, W); x0 is the
        step's (clipped) data prediction.

        ``fused=False`` runs the pure-PyTorch reference of the same update.
        """
        impl = ops if fused else reference
        return impl.sampler_update(x, model_output, prev_x0, noise, step, self.tables(x.device, x.dtype),
                                   *self.clipping_args())

    def _betas(self, t):
        """beta_t = 1 - abar_t / abar_{t-1} (abar_{-1} = 1), from the one alphas_cumprod."""
        abar_prev = torch.where(t > 0, self.alphas_cumprod[(t - 1).clamp(min=0)], 1.0)
        return 1.0 - self.alphas_cumprod[t] / abar_prev

    def _predictions(self, t):
        """x0 and eps as (x, m) coefficients for the model output m at timesteps t, by the
        prediction type: ((x0_x, x0_m), (eps_x, eps_m)), each (S,) float64."""
        abar = self.alphas_cumprod[t]
        a, s = abar.sqrt(), (1.0 - abar).sqrt()
        zero, one = torch.zeros_like(a), torch.ones_like(a)
        if self.prediction_type == "epsilon":  # x0 = (x - s eps) / a
            return (1.0 / a, -s / a), (zero, one)
        if self.prediction_type == "sample":  # eps = (x - a x0) / s
            return (zero, one), (1.0 / s, -a / s)
        return (a, -s), (s, a)  # v: x0 = a x - s v, eps = s x + a v

    def _table(self, update, timesteps):
        """The (S, 7) table from the sampler's (S, 5) update in terms of ``_UPDATE_TERMS``.

        Without clipping x0 = x0_x x + x0_m m is linear, and its term is folded into x's and
        m's, so the op's x0 column is 0; with clipping x0 enters as it is.
        """
        (x0_x, x0_m), (eps_x, eps_m) = self._predictions(timesteps)
        on_x, on_eps, on_x0, on_prev, on_noise = update.unbind(1)
        table = torch.zeros(len(timesteps), len(COEFFICIENTS), dtype=torch.float64)
        table[:, 0] = on_x + on_eps * eps_x
        table[:, 1] = on_eps * eps_m
        if self.bounds_x0:
            table[:, 2] = on_x0
        else:
            table[:, 0] += on_x0 * x0_x
            table[:, 1] += on_x0 * x0_m
        table[:, 3], table[:, 4] = on_prev, on_noise
        table[:, 5], table[:, 6] = x0_x, x0_m
        return table

    def _timesteps(self, steps, timestep_spacing):
        raise NotImplementedError

    def _update(self, timesteps):
        """(S, 5) float64: each step's x_next in terms of ``_UPDATE_TERMS``."""
        raise NotImplementedError


class DDPMSampler(Sampler):
    """The blog's ancestral sampler (DDPM algorithm 2) over all T steps, T - 1 down to 0:
    ``x_prev = (x - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) + sigma_t * noise`` with
    the posterior's sigma_t (0 at t = 0). Every spacing gives the same grid of all T steps.

    With a bounded x0 it is the posterior mean in terms of x0, as diffusers' DDPMScheduler:
    ``x_prev = sqrt(abar_{t-1}) beta_t / (1 - abar_t) * x0 + sqrt(alpha_t) (1 - abar_{t-1}) /
    (1 - abar_t) * x + sigma_t * noise``. The seed clips nothing, and neither does the default."""

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

    def _update(self, timesteps):
        betas, abar = self._betas(timesteps), self.alphas_cumprod[timesteps]
        abar_prev = torch.where(timesteps > 0, self.alphas_cumprod[(timesteps - 1).clamp(min=0)], 1.0)
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        update = torch.zeros(len(timesteps), len(_UPDATE_TERMS), dtype=torch.float64)
        if self.bounds_x0:
            # The posterior mean in terms of the clipped x0 (diffusers' DDPMScheduler).
            update[:, 0] = (1.0 - betas).sqrt() * (1.0 - abar_prev) / (1.0 - abar)
            update[:, 2] = abar_prev.sqrt() * betas / (1.0 - abar)
        else:
            # The blog's form of the same mean, in terms of eps.
            sqrt_recip_alpha = 1.0 / (1.0 - betas).sqrt()
            update[:, 0] = sqrt_recip_alpha
            update[:, 1] = -sqrt_recip_alpha * betas / (1.0 - abar).sqrt()
        update[:, 4] = posterior_variance.sqrt()
        return update


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eqs. 12 and 16) with noise scale ``eta`` in [0, 1]: each step
    goes from t to the next timestep of its grid, the last one to alpha_bar = 1.

    ``x_s = sqrt(abar_s) * x0 + sqrt(1 - abar_s - sigma^2) * eps + sigma * noise`` with
    ``sigma = eta * sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))``. eta = 0 is
    deterministic; eta = 1 over all T steps is the DDPM posterior.

    With a bounded x0 (``clip_sample``, ``thresholding``) the direction term keeps the model's
    own eps, as diffusers does by default; ``use_clipped_model_output=True`` re-derives it from
    the clipped x0 (diffusers' flag of that name; lucidrains' ``ddim_sample``).

    Unlike diffusers' DDIMScheduler, which always steps to t - T // steps, this steps to the
    grid's next timestep: the two agree for 'leading' and for 'trailing' when steps divides T,
    and only this one is right for 'linspace', whose grid is not T // steps apart.
    """

    name = "ddim"

    def __init__(self, steps=None, eta=0.0, timestep_spacing=DEFAULT_TIMESTEP_SPACING, *,
                 use_clipped_model_output=False, **clipping):
        super().__init__(steps, timestep_spacing, **clipping)
        check_eta(eta)
        self.eta = float(eta)
        self.use_clipped_model_output = bool(use_clipped_model_output)
        self.uses_noise = self.eta > 0

    def _extra_repr(self):
        return f", eta={self.eta}" + (", use_clipped_model_output=True" if self.use_clipped_model_output else "")

    def settings(self):
        return {**super().settings(), "eta": self.eta}

    def _timesteps(self, steps, timestep_spacing):
        return ddim_timesteps(self.num_train_timesteps, steps, timestep_spacing)

    def _update(self, timesteps):
        abar_t = self.alphas_cumprod[timesteps]
        abar_s = torch.cat([self.alphas_cumprod[timesteps[1:]], torch.ones(1, dtype=torch.float64)])
        sigma = self.eta * ((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)).sqrt()
        direction = (1.0 - abar_s - sigma**2).clamp(min=0.0).sqrt()
        update = torch.zeros(len(timesteps), len(_UPDATE_TERMS), dtype=torch.float64)
        update[:, 2] = abar_s.sqrt()
        if self.bounds_x0 and self.use_clipped_model_output:
            # eps re-derived from the clipped x0: (x - sqrt(abar_t) x0) / sqrt(1 - abar_t).
            update[:, 0] = direction / (1.0 - abar_t).sqrt()
            update[:, 2] -= direction * abar_t.sqrt() / (1.0 - abar_t).sqrt()
        else:
            update[:, 1] = direction
        update[:, 4] = sigma
        return update


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

    def _update(self, timesteps):
        abar = torch.cat([self.alphas_cumprod[timesteps], torch.ones(1, dtype=torch.float64)])
        alpha, sigma = abar.sqrt(), (1.0 - abar).sqrt()
        lam = alpha.log() - sigma.log()  # +inf at the end, sigma = 0
        update = torch.zeros(len(timesteps), len(_UPDATE_TERMS), dtype=torch.float64)
        steps = len(timesteps)
        for k in range(steps):
            last = k == steps - 1
            h = lam[k + 1] - lam[k]  # inf on the last step
            on_x, weight, on_noise = self._first_order(alpha[k + 1], sigma[k + 1], sigma[k], h, last)
            if k == 0 or last:
                on_x0, on_prev = weight, 0.0
            else:
                r = float((lam[k] - lam[k - 1]) / h)
                on_x0, on_prev = weight * (1.0 + 0.5 / r), -weight * 0.5 / r
            update[k, 0], update[k, 2], update[k, 3], update[k, 4] = on_x, on_x0, on_prev, on_noise
        return update

    def _first_order(self, alpha_next, sigma_next, sigma, h, last):
        """(on x, on x0, on noise) of the first-order step from sigma to sigma_next over h =
        lambda_next - lambda: ``sigma_next / sigma * x + alpha_next * (1 - e^-h) * x0``. At the
        end h = inf and alpha = 1, so the step returns x0."""
        weight = 1.0 if last else float(alpha_next * -torch.expm1(-h))
        return float(sigma_next / sigma), weight, 0.0


class SDEDPMSolverPlusPlusSampler(DPMSolverPlusPlusSampler):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022), the stochastic form of :class:`DPMSolverPlusPlusSampler`
    as diffusers' ``algorithm_type="sde-dpmsolver++"``, ``solver_type="midpoint"``: each step
    shrinks x by e^-h more, takes twice the data prediction's weight and adds fresh noise::

        x_{k+1} = sigma_{k+1} / sigma_k * e^-h * x + alpha_{k+1} * (1 - e^-2h) * (x0 + (x0 - prev_x0) / (2 r))
                  + sigma_{k+1} * sqrt(1 - e^-2h) * noise

    First order on the first and the last step, as the ODE solver; the last one returns x0.
    """

    name = "sde-dpm-solver++"
    uses_noise = True

    def _first_order(self, alpha_next, sigma_next, sigma, h, last):
        if last:  # sigma_next = 0: no noise, x0 itself
            return 0.0, 1.0, 0.0
        decay = torch.exp(-h)
        return (float(sigma_next / sigma * decay), float(alpha_next * -torch.expm1(-2.0 * h)),
                float(sigma_next * (-torch.expm1(-2.0 * h)).sqrt()))


SAMPLER_CLASSES = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm-solver++": DPMSolverPlusPlusSampler,
                   "sde-dpm-solver++": SDEDPMSolverPlusPlusSampler}


def make_sampler(name, steps=None, eta=0.0, timestep_spacing=DEFAULT_TIMESTEP_SPACING, **options):
    """The sampler called ``name`` (one of ``SAMPLERS``) with these settings: the string
    shorthand of ``sample(..., sampler="ddim", steps=50)``.

    ``steps=None`` means all T steps. ``eta`` is DDIM's noise scale; the other samplers take
    none (0). ``options`` are the clipping settings of :class:`Sampler` (``clip_sample``,
    ``thresholding``, ...) and DDIM's ``use_clipped_model_output``.
    """
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not known; choose one of {SAMPLERS}")
    if name == "ddim":
        return DDIMSampler(steps, eta, timestep_spacing, **options)
    check_eta(eta)
    if eta != 0:
        raise ValueError(f"eta is DDIM's noise scale; sampler={name!r} takes eta=0, got {eta!r}")
    if "use_clipped_model_output" in options:
        raise ValueError(f"use_clipped_model_output is DDIM's; sampler={name!r} does not take it")
    return SAMPLER_CLASSES[name](steps, timestep_spacing, **options)
