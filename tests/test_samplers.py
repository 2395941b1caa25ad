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


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 10, 0.5), ("dpm-solver++", 10, 0.0),
                                               ("sde-dpm-solver++", 10, 0.0)])
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
    assert coefficients.dtype == torch.float64 and coefficients.shape == (10, 7) and chosen.num_steps == 10
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
    # Columns: x, model_output, x0, prev_x0, noise, x0_from_x, x0_from_model_output.
    table = samplers.make_sampler("dpm-solver++", 10).set_schedule(alphas_cumprod()).coefficients
    assert table[0, 3] == 0 and table[-1, 3] == 0 and (table[1:-1, 3] != 0).all()
    torch.testing.assert_close(table[-1, :2], table[-1, 5:])
    ddim = samplers.make_sampler("ddim", 10).set_schedule(alphas_cumprod()).coefficients
    torch.testing.assert_close(ddim[-1, :2], ddim[-1, 5:])  # alpha_bar = 1 at the end
    assert (ddim[:, 2:5] == 0).all()  # unclipped x0 folded into x and the model output


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


# ---------------------------------------------------------------- clipping, thresholding, prediction types


class Scaled(torch.nn.Module):
    """The shared model times 3: its outputs read as x0 or v then reach past [-1, 1], so that
    clipping and thresholding act at every step for every prediction type."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t):
        return 3.0 * self.model(x, t)


# Our sampler settings and diffusers' scheduler config for the same bound on x0. The ratio 0.9
# and the maximum 2.0 put the threshold between 1 and its cap, where the quantile matters.
BOUNDS = {
    "clip": (dict(clip_sample=True, clip_sample_range=1.0), dict(clip_sample=True, clip_sample_range=1.0)),
    "threshold": (dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0),
                  dict(clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)),
}


@torch.no_grad()
def diffusers_run(scheduler, steps, model, x_T, generator=None, **step_kwargs):
    """diffusers' loop with an optional generator for the noise (drawn in the same order as ours)."""
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(x.shape[0])), t, x, generator=generator, **step_kwargs).prev_sample
    return x


def ours_run(prediction_type, sampler, model, x_T, seed=None, fused=True):
    d = GaussianDiffusion(T, fused=fused, prediction_type=prediction_type)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return sample(d, model, x_T, sampler=sampler, generator=generator)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("prediction_type", samplers.PREDICTION_TYPES)
@pytest.mark.parametrize("bound", [None, "clip", "threshold"])
def test_ddpm_with_each_prediction_type_and_bound_equals_diffusers(model, x_T, fused, prediction_type, bound):
    # diffusers draws the noise of t > 0 from the generator, we draw one more at t = 0 (weight 0):
    # the same draws reach the same steps.
    ours_bound, their_bound = BOUNDS[bound] if bound else ({}, dict(clip_sample=False))
    net = Scaled(model)
    ours = ours_run(prediction_type, samplers.DDPMSampler(**ours_bound), net, x_T, seed=11, fused=fused)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, trained_betas=betas().numpy(),
                                        prediction_type=prediction_type, variance_type="fixed_small", **their_bound)
    theirs = diffusers_run(scheduler, T, net, x_T, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("prediction_type", samplers.PREDICTION_TYPES)
@pytest.mark.parametrize("bound", ["clip", "threshold"])
@pytest.mark.parametrize("use_clipped_model_output", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_with_each_prediction_type_and_bound_equals_diffusers(model, x_T, fused, prediction_type, bound,
                                                                   use_clipped_model_output, eta):
    ours_bound, their_bound = BOUNDS[bound]
    net = Scaled(model)
    chosen = samplers.DDIMSampler(10, eta, "leading", use_clipped_model_output=use_clipped_model_output, **ours_bound)
    ours = ours_run(prediction_type, chosen, net, x_T, seed=12, fused=fused)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=betas().numpy(),
                                        prediction_type=prediction_type, timestep_spacing="leading", **their_bound)
    theirs = diffusers_run(scheduler, 10, net, x_T, generator=torch.Generator().manual_seed(12), eta=eta,
                           use_clipped_model_output=use_clipped_model_output)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("prediction_type", samplers.PREDICTION_TYPES)
@pytest.mark.parametrize("thresholding", [False, True])
@pytest.mark.parametrize("sde", [False, True])
@pytest.mark.parametrize("steps", [1, 2, 10, 20])
def test_dpm_solvers_with_each_prediction_type_equal_diffusers(model, x_T, fused, prediction_type, thresholding,
                                                               sde, steps):
    # diffusers' DPMSolverMultistepScheduler bounds x0 by thresholding only (no clip_sample).
    ours_bound, their_bound = BOUNDS["threshold"] if thresholding else ({}, {})
    their_bound = {k: v for k, v in their_bound.items() if k != "clip_sample"}
    net = Scaled(model)
    cls = samplers.SDEDPMSolverPlusPlusSampler if sde else samplers.DPMSolverPlusPlusSampler
    ours = ours_run(prediction_type, cls(steps, "trailing", **ours_bound), net, x_T, seed=13, fused=fused)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=betas().numpy(), prediction_type=prediction_type,
        algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++", solver_order=2, timestep_spacing="trailing",
        **their_bound)
    theirs = diffusers_run(scheduler, steps, net, x_T, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_clip_sample_in_dpm_solver_bounds_every_data_prediction(model, x_T):
    # No diffusers twin (its DPM-Solver has thresholding only): every step's x0, the one that
    # enters the update and the history, lies in [-r, r].
    d = GaussianDiffusion(T)
    chosen = samplers.DPMSolverPlusPlusSampler(10, clip_sample=True, clip_sample_range=0.5).set_schedule(
        d.alphas_cumprod64)
    x, prev_x0 = x_T.clone(), None
    for k, timestep in enumerate(chosen.timesteps.tolist()):
        step = torch.full((BATCH,), k)
        with torch.no_grad():
            x, x0 = chosen.step(x, Scaled(model)(x, torch.full((BATCH,), timestep)), step, prev_x0)
        assert x0.abs().max() <= 0.5
        prev_x0 = x0
    torch.testing.assert_close(x, x0)  # the last step returns its data prediction


@pytest.mark.parametrize("bound", ["clip", "threshold"])
def test_bounds_change_the_samples(model, x_T, bound):
    # The agreement tests above would pass vacuously if x0 never left [-1, 1]: it does here.
    net = Scaled(model)
    plain = ours_run("epsilon", samplers.DDIMSampler(10), net, x_T)
    bounded = ours_run("epsilon", samplers.DDIMSampler(10, **BOUNDS[bound][0]), net, x_T)
    assert (plain - bounded).abs().max() > 0.1


def test_the_default_ddpm_sampler_clips_nothing(model, x_T):
    # The seed's sampler: unbounded x0, and x0's terms folded into x and eps as in the blog.
    chosen = samplers.DDPMSampler()
    assert not chosen.clip_sample and not chosen.thresholding and chosen.clipping_args()[:2] == (0.0, 0.0)
    table = chosen.set_schedule(alphas_cumprod()).coefficients
    assert (table[:, 2] == 0).all()


def test_bad_clipping_and_prediction_type_arguments_are_named():
    with pytest.raises(ValueError, match=r"prediction_type='x0' is not known; choose one of"):
        GaussianDiffusion(T, prediction_type="x0")
    with pytest.raises(ValueError, match=r"prediction_type='velocity' is not known"):
        samplers.DDIMSampler(10).set_schedule(alphas_cumprod(), "velocity")
    with pytest.raises(ValueError, match=r"dynamic_thresholding_ratio must lie in \(0, 1\], got 1.5"):
        samplers.DDIMSampler(10, thresholding=True, dynamic_thresholding_ratio=1.5)
    with pytest.raises(ValueError, match=r"dynamic_thresholding_ratio must lie in \(0, 1\], got 0"):
        samplers.DPMSolverPlusPlusSampler(10, thresholding=True, dynamic_thresholding_ratio=0)
    with pytest.raises(ValueError, match=r"sample_max_value must be a number > 0, got 0"):
        samplers.DDPMSampler(thresholding=True, sample_max_value=0)
    with pytest.raises(ValueError, match=r"sample_max_value must be a number > 0, got -1"):
        samplers.SDEDPMSolverPlusPlusSampler(10, thresholding=True, sample_max_value=-1)
    with pytest.raises(ValueError, match=r"clip_sample_range must be a number > 0"):
        samplers.DDIMSampler(10, clip_sample=True, clip_sample_range=0)
    with pytest.raises(ValueError, match=r"clip_sample and thresholding are two ways to bound x0"):
        samplers.DDIMSampler(10, clip_sample=True, thresholding=True)
    with pytest.raises(ValueError, match=r"use_clipped_model_output is DDIM's"):
        samplers.make_sampler("dpm-solver++", 10, use_clipped_model_output=True)


def test_prediction_type_changes_the_tables():
    chosen = samplers.DDIMSampler(10)
    eps_table = chosen.set_schedule(alphas_cumprod(), "epsilon").coefficients
    v_table = chosen.set_schedule(alphas_cumprod(), "v_prediction").coefficients
    assert chosen.prediction_type == "v_prediction" and not torch.equal(eps_table, v_table)
    abar = alphas_cumprod()[chosen.timesteps]
    torch.testing.assert_close(v_table[:, 5], abar.sqrt())  # x0 = sqrt(abar) x - sqrt(1 - abar) v
    torch.testing.assert_close(v_table[:, 6], -(1 - abar).sqrt())
