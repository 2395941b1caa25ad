"""Gaussian diffusion: the blog's schedule, forward noising, loss and sampling loop as one module.

The model is an argument of every method (as in improved-diffusion), so the same diffusion
serves the reference U-Net, an accelerated one or a user's own. The samplers' maths (DDPM,
DDIM, DPM-Solver++) lives in :mod:`ddpm_fast.diffusion.samplers`; this module runs their loop.
"""

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import ops
from ..ops import reference
from .samplers import DDPMSampler, Sampler, check_prediction_type, make_sampler
from .schedules import make_beta_schedule

LOSS_TYPES = ("l1", "l2", "huber")


class GaussianDiffusion(nn.Module):
    """DDPM with ``timesteps`` steps and a named beta schedule.

    Schedule tensors are computed once in float64 and kept as float32 buffers, so they follow
    ``.to(device)``. Timesteps ``t`` are (B,) int64 tensors on the same device as the images;
    nothing here moves them to the host.

    Args:
        timesteps: number of diffusion steps T.
        beta_schedule: 'linear' (the blog's choice), 'cosine', 'quadratic' or 'sigmoid'.
        prediction_type: what the model predicts, as in diffusers: 'epsilon' (the noise; the
            blog's), 'sample' (the clean image) or 'v_prediction' (v = sqrt(abar) * noise -
            sqrt(1 - abar) * x0). The loss trains it; every sampler reads it.
        fused: use the compiled q_sample / sampler_update kernels. ``None`` (default) uses them when
            the extension is loaded; ``False`` forces the pure-PyTorch reference; ``True``
            raises if the extension is not available.
    """

    def __init__(self, timesteps=200, beta_schedule="linear", fused=None, prediction_type="epsilon"):
        super().__init__()
        check_prediction_type(prediction_type)
        betas = make_beta_schedule(beta_schedule, timesteps)
        if fused and not ops.compiled_ops_loaded():
            raise RuntimeError(
                f"fused=True but the compiled ops are not available: {ops.load_error()}"
            )
        self.fused = ops.compiled_ops_loaded() if fused is None else bool(fused)
        self.timesteps = timesteps
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type

        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # The one alphas_cumprod: every sampler's tables are computed from it, in float64.
        self.alphas_cumprod64 = alphas_cumprod
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # posterior_variance[0] is exactly 0 (alphas_cumprod_prev[0] == 1): the last reverse
        # step adds no noise, with no branch on t. Assign it anyway so that it stays exact.
        posterior_variance[0] = 0.0

        def buffer(name, value):
            self.register_buffer(name, value.to(torch.float32), persistent=False)

        buffer("betas", betas)
        buffer("alphas_cumprod", alphas_cumprod)
        buffer("alphas_cumprod_prev", alphas_cumprod_prev)
        buffer("sqrt_alphas_cumprod", torch.sqrt(alphas_cumprod))
        buffer("sqrt_one_minus_alphas_cumprod", torch.sqrt(1.0 - alphas_cumprod))
        buffer("posterior_variance", posterior_variance)
        # p_sample's update is a row of the DDPM sampler's table (row T - 1 - t).
        self.ddpm = DDPMSampler().set_schedule(alphas_cumprod, prediction_type)
        self._by_name = {}  # the samplers the string shorthand built, so their tables are computed once

    def extra_repr(self):
        return (f"timesteps={self.timesteps}, beta_schedule={self.beta_schedule!r}, "
                f"prediction_type={self.prediction_type!r}, fused={self.fused}")

    def _ops(self):
        return ops if self.fused else reference

    def check_timesteps(self, t, x):
        """Validate ``t`` against a batch ``x``: a (B,) integer tensor on x's device, in [0, T).

        The range is checked only for CPU tensors, where it costs no device sync; the compiled
        CUDA kernels check it on the device.
        """
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point:
            raise TypeError(f"t must be a 1-D integer tensor of timesteps, got {_describe(t)}")
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have one timestep per image: batch {x.shape[0]}, got {t.shape[0]}")
        if t.device != x.device:
            raise ValueError(f"t must be on the images' device {x.device}, got {t.device}")
        if t.device.type == "cpu" and t.numel() and (t.min() < 0 or t.max() >= self.timesteps):
            raise ValueError(
                f"t must lie in [0, {self.timesteps}), got values in [{int(t.min())}, {int(t.max())}]"
            )

    def q_sample(self, x_start, t, noise=None):
        """Noise clean images to timestep t: ``x_start: (B, C, H, W)``, ``t: (B,)`` -> (B, C, H, W)."""
        self.check_timesteps(t, x_start)
        if noise is None:
            noise = torch.randn_like(x_start)
        return self._ops().q_sample(
            x_start, t.long(), self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod, noise
        )

    def p_losses(self, denoise_model, x_start, t, noise=None, loss_type="l1", min_snr_gamma=None):
        """The training loss: how well ``denoise_model(x_t, t)`` predicts its target, the added
        noise, the clean image or v by ``prediction_type``.

        x_start: (B, C, H, W); t: (B,). loss_type: 'l1', 'l2' (MSE) or 'huber' (smooth L1).
        ``min_snr_gamma``: Min-SNR-gamma weighting (Hang et al. 2023), each sample's loss times
        ``min(SNR_t, gamma) / SNR_t`` for epsilon, ``min(SNR_t, gamma)`` for sample and
        ``min(SNR_t, gamma) / (SNR_t + 1)`` for v, with SNR_t = abar_t / (1 - abar_t); None (the
        blog's) weighs every timestep alike. Returns a scalar tensor.
        """
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={loss_type!r} is not known; choose one of {LOSS_TYPES}")
        if min_snr_gamma is not None and (isinstance(min_snr_gamma, bool) or not min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma must be a number > 0, or None for no weighting, got {min_snr_gamma!r}")
        if noise is None:
            noise = torch.randn_like(x_start)
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        prediction = denoise_model(x_noisy, t)
        target = self.training_target(x_start, t, noise)
        loss = {"l1": F.l1_loss, "l2": F.mse_loss, "huber": F.smooth_l1_loss}[loss_type]
        if min_snr_gamma is None:
            return loss(target, prediction)
        per_sample = loss(target, prediction, reduction="none").flatten(1).mean(dim=1)
        return (per_sample * self.min_snr_weights(t, min_snr_gamma).to(per_sample.dtype)).mean()

    def training_target(self, x_start, t, noise):
        """What the model learns to predict at (x_start, t, noise), by ``prediction_type``:
        (B, C, H, W)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x_start
        a = reference.gather_timesteps(self.sqrt_alphas_cumprod, t.long(), x_start.dim()).to(x_start.dtype)
        s = reference.gather_timesteps(self.sqrt_one_minus_alphas_cumprod, t.long(), x_start.dim()).to(x_start.dtype)
        return a * noise - s * x_start

    def min_snr_weights(self, t, gamma):
        """Min-SNR-gamma's loss weight of each sample at timesteps t (B,): (B,) float32."""
        abar = self.alphas_cumprod.gather(0, t.long())
        snr = abar / (1.0 - abar)
        clipped = snr.clamp(max=gamma)
        if self.prediction_type == "epsilon":
            return clipped / snr
        if self.prediction_type == "sample":
            return clipped
        return clipped / (snr + 1.0)

    @torch.no_grad()
    def p_sample(self, model, x, t, t_index, noise=None):
        """One reverse step x_t -> x_{t-1}: ``x: (B, C, H, W)``, ``t: (B,)`` -> (B, C, H, W).

        The step is row T - 1 - t of the DDPM sampler's table, through ``sampler_update``.
        ``t_index`` is the blog's Python copy of the timestep; it is checked but nothing
        branches on it: at t = 0 the noise's coefficient is the posterior's sigma_0 == 0.
        """
        if not 0 <= int(t_index) < self.timesteps:
            raise ValueError(f"t_index must lie in [0, {self.timesteps}), got {t_index}")
        self.check_timesteps(t, x)
        if noise is None:
            noise = torch.randn_like(x)
        model_output = model(x, t.long())
        x_prev, _ = self.ddpm.step(x, model_output.to(x.dtype), self.timesteps - 1 - t.long(), noise=noise,
                                   fused=self.fused)
        return x_prev

    def _as_sampler(self, sampler, steps, eta, timestep_spacing):
        """``sampler`` as an object with its tables set for this schedule: a Sampler as it is, a
        name (the shorthand) built with ``steps``, ``eta`` and ``timestep_spacing``."""
        if isinstance(sampler, Sampler):
            given = [name for name, value in (("steps", steps), ("eta", eta), ("timestep_spacing", timestep_spacing))
                     if value is not None]
            if given:
                raise TypeError(f"{', '.join(given)} belong to the sampler object: pass e.g. "
                                f"{type(sampler).__name__}(steps=...), not sample(..., steps=...)")
        elif isinstance(sampler, str):
            key = (sampler, steps, eta, timestep_spacing)
            if key not in self._by_name:
                options = dict(steps=steps, eta=eta, timestep_spacing=timestep_spacing)
                self._by_name[key] = make_sampler(sampler, **{k: v for k, v in options.items() if v is not None})
            sampler = self._by_name[key]
        else:
            raise TypeError(f"sampler must be a Sampler object (e.g. DDIMSampler(steps=50)) or one of "
                            f"its names, got {type(sampler).__name__}")
        return sampler.set_schedule(self.alphas_cumprod64, self.prediction_type)

    @torch.no_grad()
    def p_sample_loop(self, model, shape, return_all_timesteps=True, progress=True, cuda_graph=False, *,
                      sampler="ddpm", steps=None, eta=None, timestep_spacing=None, x_T=None, generator=None):
        """Run the reverse process from noise with one of the samplers.

        Args:
            model: the trained model, ``model(x, t) -> eps`` (or x0 or v, by ``prediction_type``)
                with ``x: (B, C, H, W)``, ``t: (B,)``.
            shape: (B, C, H, W) of the images.
            return_all_timesteps: return every visited step, else only the final images.
            progress: show a progress bar over the steps.
            cuda_graph: capture the whole loop as one CUDA graph and replay it (CUDA models only).
            sampler: a :class:`~ddpm_fast.diffusion.samplers.Sampler` object, e.g.
                ``DDIMSampler(steps=50, eta=0.0)``; or the shorthand of its name: 'ddpm' (the
                blog's ancestral sampler, all T steps; the default), 'ddim', 'dpm-solver++'
                (the second-order multistep solver with data prediction) or 'sde-dpm-solver++'
                (its stochastic form). Clipping and thresholding are settings of the objects.
            steps, eta, timestep_spacing: with a name only, the settings of the sampler it
                builds (see :func:`~ddpm_fast.diffusion.samplers.make_sampler`): S model
                evaluations (None for T; 'ddpm' takes only T), DDIM's noise scale in [0, 1],
                and 'leading', 'trailing' or 'linspace' as in diffusers.
            x_T: (B, C, H, W) starting noise, on any device; its dtype is the run's (default:
                float32 noise drawn with ``generator``).
            generator: a ``torch.Generator`` that makes every random draw (x_T and each step's
                noise), so a call is reproducible without touching the global seed; default:
                the global RNG. A generator on another device than the model draws there and
                the noise is copied over, as diffusers does.

        Returns a CPU tensor (S, B, C, H, W) of every step's images, ``[-1]`` being the final
        samples, so ``samples[step][i]`` indexes like the blog's list; or only (B, C, H, W) with
        ``return_all_timesteps=False``. Images stay on the device until the loop ends: no step
        synchronises with the host (the step index and timestep are device tensors filled from
        host integers, and the tables were copied to the device once).

        ``cuda_graph=True`` records the S steps once into one CUDA graph (after two eager warm-up
        steps) and replays it, removing every per-step launch. Its noise is drawn inside the
        graph from ``generator`` (or torch's CUDA generator), so a graphed call is reproducible,
        but its draws differ from the eager loop's (the distribution does not).
        """
        device = next(model.parameters()).device
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a model on a CUDA device, got {device}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if cuda_graph and generator is not None and generator.device != device:
            raise ValueError(f"cuda_graph=True draws its noise inside the graph: generator must be on "
                             f"the model's device {device}, got {generator.device}")
        chosen = self._as_sampler(sampler, steps, eta, timestep_spacing)
        x = self._starting_noise(shape, x_T, generator, device)
        chosen.tables(device, x.dtype)  # copied to the device here, before the first step
        record = torch.empty((chosen.num_steps, *x.shape), device=device, dtype=x.dtype) if return_all_timesteps else None
        bar = tqdm(total=chosen.num_steps, desc=f"sampling ({chosen.name}, {chosen.num_steps} steps)",
                   disable=not progress)
        if cuda_graph:
            x = self._graphed_loop(model, chosen, x, generator, record, bar)
        else:
            x = self._run_sampler(model, chosen, x, generator, record, bar)
        bar.close()
        return (record if record is not None else x).cpu()

    def _starting_noise(self, shape, x_T, generator, device):
        if x_T is None:
            return _randn(tuple(shape), generator, device, torch.float32)
        if not isinstance(x_T, torch.Tensor) or tuple(x_T.shape) != tuple(shape) or not x_T.is_floating_point():
            got = f"{x_T.dtype} tensor of shape {tuple(x_T.shape)}" if isinstance(x_T, torch.Tensor) else type(x_T).__name__
            raise ValueError(f"x_T must be a floating-point tensor of shape {tuple(shape)}, got a {got}")
        return x_T.to(device)

    def _run_sampler(self, model, sampler, x, generator, record=None, bar=None, count=None):
        """Steps 0 .. count - 1 (default: all) of ``sampler`` from ``x``; returns the last x.

        The body of every loop, eager or captured: no validation and no host sync. The step
        index and timestep are (B,) device tensors filled from host integers, and the op takes
        its coefficient row on the device.
        """
        b = x.shape[0]
        step = torch.empty(b, dtype=torch.long, device=x.device)
        t = torch.empty(b, dtype=torch.long, device=x.device)
        timesteps = sampler.timesteps.tolist()
        prev_x0 = None
        for k in range(sampler.num_steps if count is None else count):
            step.fill_(k)
            t.fill_(timesteps[k])
            noise = _randn(x.shape, generator, x.device, x.dtype) if sampler.uses_noise else None
            model_output = model(x, t).to(x.dtype)
            x, x0 = sampler.step(x, model_output, step, prev_x0, noise, fused=self.fused)
            prev_x0 = x0 if sampler.uses_prev_x0 else None
            if record is not None:
                record[k].copy_(x)
            if bar is not None:
                bar.update(1)
        return x

    def _graphed_loop(self, model, sampler, x, generator, record, bar):
        """The whole loop of ``sampler`` from ``x`` captured as one CUDA graph and replayed once;
        returns the final images (the graph's output)."""
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            self._run_sampler(model, sampler, x, generator, count=min(2, sampler.num_steps))
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if generator is not None:  # the default CUDA generator is registered by the capture
            graph.register_generator_state(generator)
        # Under autocast, capture needs the cast cache off (PyTorch's CUDA-graph notes): cached
        # casts of the weights made outside the capture would be reused inside it.
        autocast = torch.is_autocast_enabled("cuda")
        with torch.cuda.graph(graph), torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                                     enabled=autocast, cache_enabled=False):
            out = self._run_sampler(model, sampler, x, generator, record, bar)
        graph.replay()
        return out

    @torch.no_grad()
    def sample(self, model, image_size, batch_size=16, channels=3, sampler="ddpm", **kwargs):
        """Sample ``batch_size`` square images of ``image_size`` with ``sampler`` (an object, e.g.
        ``DDIMSampler(steps=50)``, or a name); see :meth:`p_sample_loop` for the other arguments
        and the result."""
        return self.p_sample_loop(model, (batch_size, channels, image_size, image_size), sampler=sampler, **kwargs)


def _randn(shape, generator, device, dtype):
    """Standard normal noise on ``device`` drawn by ``generator`` (default: the global RNG).

    A generator on another device draws there and the noise is copied over (diffusers'
    ``randn_tensor`` does the same), so a CPU generator also drives a CUDA run.
    """
    if generator is None or generator.device == torch.device(device):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _describe(t):
    if isinstance(t, torch.Tensor):
        return f"a {t.dim()}-D {t.dtype} tensor"
    return type(t).__name__
