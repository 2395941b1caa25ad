"""Gaussian diffusion: the seed's schedule, forward noising, loss and sampler as one module.

The model is an argument of every method (as in improved-diffusion), so the same diffusion
serves the reference U-Net, an accelerated one or a user's own.
"""

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import ops, reference
from .schedules import make_beta_schedule

LOSS_TYPES = ("l1", "l2", "huber")


class GaussianDiffusion(nn.Module):
    """DDPM with ``timesteps`` steps and a named beta schedule.

    Schedule tensors are computed once in float64 and kept as float32 buffers, so they follow
    ``.to(device)``. Timesteps ``t`` are (B,) int64 tensors on the same device as the images;
    nothing here moves them to the host.

    Args:
        timesteps: number of diffusion steps T.
        beta_schedule: 'linear' (the seed's choice), 'cosine', 'quadratic' or 'sigmoid'.
        fused: use the compiled q_sample / p_sample kernels. ``None`` (default) uses them when
            the extension is loaded; ``False`` forces the pure-PyTorch reference; ``True``
            raises if the extension is not available.
    """

    def __init__(self, timesteps=200, beta_schedule="linear", fused=None):
        super().__init__()
        betas = make_beta_schedule(beta_schedule, timesteps)
        if fused and not ops.compiled_ops_loaded():
            raise RuntimeError(
                f"fused=True but the compiled ops are not available: {ops.load_error()}"
            )
        self.fused = ops.compiled_ops_loaded() if fused is None else bool(fused)
        self.timesteps = timesteps
        self.beta_schedule = beta_schedule

        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # posterior_variance[0] is exactly 0 (alphas_cumprod_prev[0] == 1): the last reverse
        # step adds no noise, with no branch on t. Assign it anyway so that it stays exact.
        posterior_variance[0] = 0.0
        sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - alphas_cumprod)

        def buffer(name, value):
            self.register_buffer(name, value.to(torch.float32), persistent=False)

        buffer("betas", betas)
        buffer("alphas_cumprod", alphas_cumprod)
        buffer("alphas_cumprod_prev", alphas_cumprod_prev)
        buffer("sqrt_recip_alphas", torch.sqrt(1.0 / alphas))
        buffer("sqrt_alphas_cumprod", torch.sqrt(alphas_cumprod))
        buffer("sqrt_one_minus_alphas_cumprod", sqrt_one_minus_alphas_cumprod)
        buffer("posterior_variance", posterior_variance)
        # The two coefficients of the reverse update, precomputed so a step only gathers them.
        buffer("eps_coef", betas / sqrt_one_minus_alphas_cumprod)
        buffer("posterior_std", torch.sqrt(posterior_variance))

    def extra_repr(self):
        return f"timesteps={self.timesteps}, beta_schedule={self.beta_schedule!r}, fused={self.fused}"

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

    def p_losses(self, denoise_model, x_start, t, noise=None, loss_type="l1"):
        """The training loss: how well ``denoise_model(x_t, t)`` predicts the added noise.

        loss_type: 'l1', 'l2' (MSE) or 'huber' (smooth L1). Returns a scalar tensor.
        """
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={loss_type!r} is not known; choose one of {LOSS_TYPES}")
        if noise is None:
            noise = torch.randn_like(x_start)
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        predicted_noise = denoise_model(x_noisy, t)
        if loss_type == "l1":
            return F.l1_loss(noise, predicted_noise)
        if loss_type == "l2":
            return F.mse_loss(noise, predicted_noise)
        return F.smooth_l1_loss(noise, predicted_noise)

    def _p_sample_step(self, model, x, t, noise):
        # The body of every reverse step, with no validation and no host sync.
        eps = model(x, t)
        return self._ops().p_sample_update(
            x, eps.to(x.dtype), t, self.sqrt_recip_alphas, self.eps_coef, self.posterior_std, noise
        )

    @torch.no_grad()
    def p_sample(self, model, x, t, t_index, noise=None):
        """One reverse step x_t -> x_{t-1}: ``x: (B, C, H, W)``, ``t: (B,)`` -> (B, C, H, W).

        ``t_index`` is the seed's Python copy of the timestep; it is checked but nothing
        branches on it: at t = 0 the noise is multiplied by ``posterior_std[0] == 0``.
        """
        if not 0 <= int(t_index) < self.timesteps:
            raise ValueError(f"t_index must lie in [0, {self.timesteps}), got {t_index}")
        self.check_timesteps(t, x)
        if noise is None:
            noise = torch.randn_like(x)
        return self._p_sample_step(model, x, t.long(), noise)

    @torch.no_grad()
    def p_sample_loop(self, model, shape, return_all_timesteps=True, progress=True,
                      cuda_graph=False):
        """Run all T reverse steps from pure noise.

        Returns a CPU tensor (T, B, C, H, W) of every step's images, ``[-1]`` being the final
        samples, so ``samples[step][i]`` indexes like the seed's list; or only (B, C, H, W) with
        ``return_all_timesteps=False``. Images stay on the device until the loop ends: no step
        synchronises with the host.

        ``cuda_graph=True`` (CUDA models only) captures one reverse step as a CUDA graph and
        replays it T times with the timestep in a static device buffer, removing the per-step
        launch overhead. Its noise comes from torch's CUDA generator inside the graph, so it
        follows ``torch.manual_seed`` (the draws differ from the eager loop's, the distribution
        does not).
        """
        device = next(model.parameters()).device
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a model on a CUDA device, got {device}")
        b = shape[0]
        img = torch.randn(shape, device=device)
        steps = torch.empty((self.timesteps, *shape), device=device) if return_all_timesteps else None
        t = torch.empty(b, dtype=torch.long, device=device)
        step = self._graphed_step(model, img, t) if cuda_graph else None
        for i in tqdm(reversed(range(self.timesteps)), desc="sampling loop time step",
                      total=self.timesteps, disable=not progress):
            t.fill_(i)
            if step is None:
                img = self._p_sample_step(model, img, t, torch.randn_like(img))
            else:
                img.copy_(step())
            if steps is not None:
                steps[self.timesteps - 1 - i].copy_(img)
        return (steps if steps is not None else img).cpu()

    def _graphed_step(self, model, img, t):
        """A function replaying one captured reverse step that reads ``img`` and ``t`` in place
        and returns the graph's output tensor (valid until the next replay)."""
        autocast = torch.is_autocast_enabled("cuda")
        autocast_dtype = torch.get_autocast_dtype("cuda")

        def body():
            # Under autocast, capture needs the cast cache off (PyTorch's CUDA-graph notes): cached
            # casts of the weights made outside the capture would be reused inside it.
            with torch.autocast("cuda", dtype=autocast_dtype, enabled=autocast, cache_enabled=False):
                return self._p_sample_step(model, img, t, torch.randn_like(img))

        t.fill_(self.timesteps - 1)
        saved = img.clone()
        side = torch.cuda.Stream(device=img.device)
        side.wait_stream(torch.cuda.current_stream(img.device))
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            for _ in range(2):
                body()
        torch.cuda.current_stream(img.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = body()
        img.copy_(saved)

        def replay():
            graph.replay()
            return out

        return replay

    @torch.no_grad()
    def sample(self, model, image_size, batch_size=16, channels=3, **kwargs):
        """Sample ``batch_size`` square images; see :meth:`p_sample_loop` for the result."""
        return self.p_sample_loop(model, (batch_size, channels, image_size, image_size), **kwargs)


def _describe(t):
    if isinstance(t, torch.Tensor):
        return f"a {t.dim()}-D {t.dtype} tensor"
    return type(t).__name__
