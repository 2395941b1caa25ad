"""The samplers (DDPM, DDIM, DPM-Solver++) against diffusers' schedulers and their closed forms,
given the same noise model and the same starting noise; RNG, arguments and table caching."""

import numpy as np
import pytest
import torch

from ddpm_fast import GaussianDiffusion, Unet
from ddpm_fast.diffusion import samplers, schedules
from ddpm_fast.ops import compiled_ops_loaded

diffusers = pytest.importorskip("diffusers")
# diffusers' DPMSolverMultistepScheduler calls np.array(tensor, copy=False), which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

FUSED = [False] + ([True] if compiled_ops_loaded() else [])
T = 200
BATCH = 2


@pytest.fixture(scope="module")
def model():
    """The shared noise model: a small untrained U-Net, fixed by its seed."""
    torch.manual_seed(0)
    return Unet(dim=8, channels=1, dim_mults=(1, 2)).eval()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(1))


class Float64Model(torch.nn.Module):
    """The noise model in float64; its time embedding needs float timesteps for that."""

    def __init__(self, model):
        super().__init__()
        self.net = Unet(dim=8, channels=1, dim_mults=(1, 2)).double().eval()
        self.net.load_state_dict(model.state_dict())

    def forward(self, x, t):
        return self.net(x, t.double())


def betas():
    return schedules.linear_beta_schedule(T)  # GaussianDiffusion's default, in float64


def alphas_cumprod():
    return GaussianDiffusion(T).alphas_cumprod64


def ddim_scheduler(spacing):
    return diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=betas().numpy(), clip_sample=False,
                                   timestep_spacing=spacing)


def dpm_scheduler(spacing):
    return diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=betas().numpy(),
                                                 algorithm_type="dpmsolver++", solver_order=2,
                                                 timestep_spacing=spacing)


@torch.no_grad()
def diffusers_loop(scheduler, steps, model, x_T):
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


def sample(diffusion, model, x_T, **kwargs):
    return diffusion.sample(model, 8, batch_size=x_T.shape[0], channels=1, x_T=x_T, progress=False,
                            return_all_timesteps=False, **kwargs)


@pytest.mark.parametrize("spacing", samplers.TIMESTEP_SPACINGS)
@pytest.mark.parametrize("steps", [1, 3, 7, 10, 20, 50, 150])
def test_timestep_grids_are_diffusers(spacing, steps):
    ddim, dpm = ddim_scheduler(spacing), dpm_scheduler(spacing)
    ddim.set_timesteps(steps)
    dpm.set_timesteps(steps)
    assert torch.equal(samplers.ddim_timesteps(T, steps, spacing), ddim.timesteps)
    assert torch.equal(samplers.dpm_solver_timesteps(T, steps, spacing), dpm.timesteps)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("leading", 50), ("leading", 7),
                                           ("trailing", 10), ("trailing", 50)])
def test_deterministic_ddim_equals_diffusers(model, x_T, fused, spacing, steps):
    # 'trailing' with steps dividing T and every 'leading' grid are T // steps apart, where
    # diffusers' step to t - T // steps is the grid's next timestep.
    ours = sample(GaussianDiffusion(T, fused=fused), model, x_T, sampler="ddim", steps=steps, eta=0.0,
                  timestep_spacing=spacing)
    theirs = diffusers_loop(ddim_scheduler(spacing), steps, model, x_T)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("steps", [2, 10, 50])
def test_ddim_linspace_steps_to_the_next_timestep_of_its_grid(model, x_T, fused, steps):
    """diffusers steps to t - T // steps even on 'linspace' (a quirk not copied): here each step
    goes to the grid's next timestep, and the last to alpha_bar = 1. Checked in float64 against
    DDIM's eq. 12, which also shows that float64 runs keep float64 coefficients."""
    abar = torch.cumprod(1 - betas(), 0)
    grid = samplers.ddim_timesteps(T, steps, "linspace").tolist()
    model64 = Float64Model(model)
    x = x_T.double()
    with torch.no_grad():
        for t, s in zip(grid, grid[1:] + [None]):
            a_t, a_s = abar[t], (abar[s] if s is not None else torch.tensor(1.0, dtype=torch.float64))
            eps = model64(x, torch.full((BATCH,), t))
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    ours = sample(GaussianDiffusion(T, fused=fused), model64, x_T.double(), sampler="ddim", steps=steps,
                  timestep_spacing="linspace")
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("spacing", samplers.TIMESTEP_SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 10, 20])
def test_dpm_solver_plus_plus_equals_diffusers(model, x_T, fused, spacing, steps):
    ours = sample(GaussianDiffusion(T, fused=fused), model, x_T, sampler="dpm-solver++", steps=steps,
                  timestep_spacing=spacing)
    theirs = diffusers_loop(dpm_scheduler(spacing), steps, model, x_T)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", FUSED)
def test_ddim_with_eta_one_over_all_steps_is_ddpm(model, fused):
    d = GaussianDiffusion(50, fused=fused)
    kwargs = dict(batch_size=BATCH, channels=1, progress=False)
    ddpm = d.sample(model, 8, sampler="ddpm", generator=torch.Generator().manual_seed(3), **kwargs)
    ddim = d.sample(model, 8, sampler="ddim", steps=50, eta=1.0, generator=torch.Generator().manual_seed(3),
                    **kwargs)
    assert ddpm.shape == ddim.shape == (50, BATCH, 1, 8, 8)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", FUSED)
def test_ddpm_sampler_is_the_seeds_p_sample_at_every_step(model, fused):
    d = GaussianDiffusion(20, fused=fused)
    steps = d.sample(model, 8, batch_size=BATCH, channels=1, progress=False,
                     generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(BATCH, 1, 8, 8, generator=generator)
    for k, t in enumerate(reversed(range(20))):
        noise = torch.randn(x.shape, generator=generator)
        x = d.p_sample(model, x, torch.full((BATCH,), t), t, noise=noise)
        torch.testing.assert_close(steps[k], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 10, 0.5), ("dpm-solver++", 10, 0.0)])
def test_generator_makes_a_call_reproducible_without_the_global_rng(model, sampler, steps, eta):
    d = GaussianDiffusion(T)
    before = torch.get_rng_state()
    runs = [d.sample(model, 8, batch_size=BATCH, channels=1, progress=False, sampler=sampler, steps=steps,
                     eta=eta, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == ((steps or T), BATCH, 1, 8, 8)
    other = d.sample(model, 8, batch_size=BATCH, channels=1, progress=False, sampler=sampler, steps=steps,
                     eta=eta, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


def test_x_T_is_the_starting_noise(model, x_T):
    d = GaussianDiffusion(T)
    first = d.sample(model, 8, batch_size=BATCH, channels=1, progress=False, sampler="ddim", steps=1, x_T=x_T)
    with torch.no_grad():
        eps = model(x_T, torch.full((BATCH,), T - 1))
    abar = d.alphas_cumprod[-1]
    torch.testing.assert_close(first[0], (x_T - (1 - abar).sqrt() * eps) / abar.sqrt())


def test_sampler_tables_are_computed_once_per_schedule_and_cached(model, x_T):
    d = GaussianDiffusion(T)
    chosen = samplers.DPMSolverPlusPlusSampler(steps=10, timestep_spacing="linspace")
    assert chosen.num_steps is None  # no schedule yet
    sample(d, model, x_T, sampler=chosen)
    coefficients = chosen.coefficients
    assert coefficients.dtype == torch.float64 and coefficients.shape == (10, 6) and chosen.num_steps == 10
    table = chosen.tables("cpu", torch.float32)
    assert table.dtype == torch.float32 and chosen.tables("cpu", torch.float16) is table
    assert chosen.tables("cpu", torch.float64).dtype == torch.float64
    sample(d, model, x_T, sampler=chosen)
    assert chosen.coefficients is coefficients and chosen.tables("cpu", torch.float32) is table
    sample(GaussianDiffusion(T, "cosine"), model, x_T, sampler=chosen)  # another schedule: new tables
    assert not torch.equal(chosen.coefficients, coefficients)


def test_the_name_shorthand_builds_its_tables_once(model, x_T):
    d = GaussianDiffusion(T)
    sample(d, model, x_T, sampler="dpm-solver++", steps=10)
    (built,) = d._by_name.values()
    table = built.tables("cpu")
    sample(d, model, x_T, sampler="dpm-solver++", steps=10)
    assert list(d._by_name.values()) == [built] and built.tables("cpu") is table


def test_a_sampler_object_and_its_name_sample_alike(model, x_T):
    d = GaussianDiffusion(T)
    by_object = sample(d, model, x_T, sampler=samplers.DDIMSampler(steps=10, eta=0.0, timestep_spacing="linspace"))
    by_name = sample(d, model, x_T, sampler="ddim", steps=10, timestep_spacing="linspace")
    torch.testing.assert_close(by_object, by_name, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"steps belong to the sampler object"):
        sample(d, model, x_T, sampler=samplers.DDIMSampler(steps=10), steps=20)
    with pytest.raises(TypeError, match=r"sampler must be a Sampler object"):
        sample(d, model, x_T, sampler=10)


def test_first_order_steps_use_no_history():
    # DPM-Solver++(2M) is first order on its first step and on its last (to sigma = 0, where
    # it returns the data prediction: the row equals the x0 row).
    table = samplers.make_sampler("dpm-solver++", 10).set_schedule(alphas_cumprod()).coefficients
    assert table[0, 2] == 0 and table[-1, 2] == 0 and (table[1:-1, 2] != 0).all()
    torch.testing.assert_close(table[-1, :2], table[-1, 4:])
    ddim = samplers.make_sampler("ddim", 10).set_schedule(alphas_cumprod()).coefficients
    torch.testing.assert_close(ddim[-1, :2], ddim[-1, 4:])  # alpha_bar = 1 at the end
    assert (ddim[:, 2:4] == 0).all()


def test_bad_sampler_arguments_are_named(model):
    d = GaussianDiffusion(T)

    def run(**kwargs):
        return d.sample(model, 8, batch_size=BATCH, channels=1, progress=False, **kwargs)

    with pytest.raises(ValueError, match=r"sampler='euler' is not known; choose one of"):
        run(sampler="euler")
    with pytest.raises(ValueError, match=r"steps must be a positive integer, or None for all T steps, for "
                       r"sampler='ddim', got 0"):
        run(sampler="ddim", steps=0)
    with pytest.raises(ValueError, match=r"steps must be a positive integer"):
        run(sampler="ddim", steps=2.5)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 200\] for sampler='ddim', got 201"):
        run(sampler="ddim", steps=201)
    with pytest.raises(ValueError, match=r"sampler='ddpm' runs all 200 steps"):
        run(sampler="ddpm", steps=50)
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 1\], got 1.5"):
        run(sampler="ddim", steps=10, eta=1.5)
    with pytest.raises(ValueError, match=r"sampler='dpm-solver\+\+' takes eta=0"):
        run(sampler="dpm-solver++", steps=10, eta=0.5)
    with pytest.raises(ValueError, match=r"timestep_spacing='uniform' is not known"):
        run(sampler="ddim", steps=10, timestep_spacing="uniform")
    with pytest.raises(ValueError, match=r"does not give 200 distinct timesteps"):
        run(sampler="dpm-solver++", steps=200, timestep_spacing="leading")
    with pytest.raises(ValueError, match=r"x_T must be a floating-point tensor of shape \(2, 1, 8, 8\)"):
        run(sampler="ddim", steps=10, x_T=torch.randn(3, 1, 8, 8))
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator"):
        run(sampler="ddim", steps=10, generator=0)
    with pytest.raises(ValueError, match=r"cuda_graph=True needs a model on a CUDA device"):
        run(sampler="ddim", steps=10, cuda_graph=True)


@pytest.mark.skipif(not compiled_ops_loaded(), reason="compiled extension not built")
@pytest.mark.parametrize("name", samplers.SAMPLERS)
def test_one_sampler_step_compiles_without_graph_breaks(name):
    d = GaussianDiffusion(T)
    chosen = samplers.make_sampler(name, None if name == "ddpm" else 10).set_schedule(d.alphas_cumprod64)
    x, eps, prev_x0, noise = (torch.randn(BATCH, 1, 8, 8) for _ in range(4))
    step = torch.full((BATCH,), 3)

    def one_step(x, eps, prev_x0, noise, step):
        return chosen.step(x, eps, step, prev_x0, noise)

    compiled = torch.compile(one_step, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(x, eps, prev_x0, noise, step), one_step(x, eps, prev_x0, noise, step)):
        torch.testing.assert_close(got, expected)


def test_samplers_lose_little_against_many_steps(model, x_T):
    """DPM-Solver++ at 20 steps lands closer to the 200-step deterministic DDIM sample than DDIM
    at 20 steps does: the second-order solver's reason to exist, on a fixed noise model."""
    d = GaussianDiffusion(T)
    target = sample(d, model, x_T, sampler="ddim", steps=T)
    errors = {name: (sample(d, model, x_T, sampler=name, steps=20) - target).abs().mean().item()
              for name in ("ddim", "dpm-solver++")}
    assert errors["dpm-solver++"] < errors["ddim"], errors
    assert np.isfinite(list(errors.values())).all()
