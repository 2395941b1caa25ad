"""Schedules, q_sample, p_sample and the sampler against the blog's code and their closed forms."""

import pytest
import torch

import blog_code
from ddpm_fast import GaussianDiffusion, Unet
from ddpm_fast.diffusion import schedules
from ddpm_fast.ops import compiled_ops_loaded

FUSED = [False] + ([True] if compiled_ops_loaded() else [])


def test_schedules_follow_the_seed_formulas():
    T = 200
    torch.testing.assert_close(schedules.linear_beta_schedule(T).float(), torch.linspace(0.0001, 0.02, T))
    torch.testing.assert_close(schedules.quadratic_beta_schedule(T).float(),
                               torch.linspace(0.0001**0.5, 0.02**0.5, T) ** 2)
    torch.testing.assert_close(schedules.sigmoid_beta_schedule(T).float(),
                               torch.sigmoid(torch.linspace(-6, 6, T)) * (0.02 - 0.0001) + 0.0001)
    x = torch.linspace(0, T, T + 1)
    ac = torch.cos(((x / T) + 0.008) / 1.008 * torch.pi * 0.5) ** 2
    ac = ac / ac[0]
    cosine = torch.clip(1 - ac[1:] / ac[:-1], 0.0001, 0.9999)
    torch.testing.assert_close(schedules.cosine_beta_schedule(T).float(), cosine)
    for name, fn in schedules.BETA_SCHEDULES.items():
        betas = fn(T)
        assert betas.dtype == torch.float64 and betas.shape == (T,), name
        assert 0 < betas.min() and betas.max() < 1, name


def test_buffers_match_the_seed_and_follow_the_module():
    d = GaussianDiffusion(200, "linear")
    for name in ("betas", "alphas_cumprod", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "posterior_variance"):
        torch.testing.assert_close(getattr(d, name), getattr(blog_code, name), msg=name)
        assert getattr(d, name).dtype == torch.float32
    assert d.posterior_variance[0] == 0
    # The DDPM update's table holds the blog's sqrt(1 / alpha) and the posterior's sigma_0 = 0.
    torch.testing.assert_close(d.ddpm.coefficients[-1, 3], torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(d.ddpm.coefficients[:, 0].flip(0).float(), blog_code.sqrt_recip_alphas)
    d = d.to(torch.device("meta"))
    assert d.betas.device.type == "meta"


def test_unknown_schedule_and_bad_timesteps():
    with pytest.raises(ValueError, match=r"beta_schedule='cubic' is not known"):
        GaussianDiffusion(200, "cubic")
    with pytest.raises(ValueError, match=r"timesteps must be an integer >= 2"):
        GaussianDiffusion(1)


@pytest.mark.parametrize("fused", FUSED)
def test_q_sample_closed_form_and_seed(fused):
    d = GaussianDiffusion(200, fused=fused)
    x0 = torch.randn(4, 1, 7, 7)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 100, 199])
    out = d.q_sample(x0, t, noise=noise)
    ab = blog_code.alphas_cumprod[t].view(4, 1, 1, 1)
    torch.testing.assert_close(out, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    torch.testing.assert_close(out, blog_code.q_sample(x0, t, noise=noise))


@pytest.mark.parametrize("fused", FUSED)
def test_p_sample_closed_form_and_seed(fused):
    d = GaussianDiffusion(200, fused=fused)
    model = Unet(dim=8, channels=1, dim_mults=(1, 2)).eval()
    x = torch.randn(2, 1, 8, 8)
    noise = torch.randn_like(x)
    for step in (199, 57, 0):
        t = torch.full((2,), step)
        out = d.p_sample(model, x, t, step, noise=noise)
        with torch.no_grad():
            eps = model(x, t)
        beta, ab = blog_code.betas[step], blog_code.alphas_cumprod[step]
        mean = (x - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()
        expected = mean + blog_code.posterior_variance[step].sqrt() * noise
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(out, blog_code.p_sample(model, x, t, step, noise))
    # At t = 0 the noise is dropped (the posterior's sigma_0 == 0), with no branch on t.
    t0 = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(d.p_sample(model, x, t0, 0, noise=noise),
                               d.p_sample(model, x, t0, 0, noise=torch.zeros_like(x)))


def test_timesteps_outside_range_are_rejected():
    d = GaussianDiffusion(200)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 200\), got values in \[0, 200\]"):
        d.q_sample(x, torch.tensor([0, 200]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 200\)"):
        d.q_sample(x, torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match=r"t must be a 1-D integer tensor"):
        d.q_sample(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"one timestep per image"):
        d.q_sample(x, torch.tensor([1]))
    model = Unet(dim=8, channels=1, dim_mults=(1, 2))
    with pytest.raises(ValueError, match=r"t_index must lie in \[0, 200\)"):
        d.p_sample(model, x, torch.tensor([0, 0]), 200)


def test_p_losses_types():
    d = GaussianDiffusion(200)
    model = Unet(dim=8, channels=1, dim_mults=(1, 2))
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 150])
    noise = torch.randn_like(x)
    pred = model(d.q_sample(x, t, noise), t)
    expected = {"l1": (noise - pred).abs().mean(), "l2": ((noise - pred) ** 2).mean(),
                "huber": torch.nn.functional.smooth_l1_loss(noise, pred)}
    for loss_type, value in expected.items():
        torch.testing.assert_close(d.p_losses(model, x, t, noise, loss_type), value)
    with pytest.raises(ValueError, match=r"loss_type='l3' is not known"):
        d.p_losses(model, x, t, noise, "l3")


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_each_prediction_type_trains_on_its_target(prediction_type):
    d = GaussianDiffusion(200, prediction_type=prediction_type)
    x, noise, t = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.tensor([0, 90, 199])
    abar = d.alphas_cumprod[t].reshape(3, 1, 1, 1)
    expected = {"epsilon": noise, "sample": x,
                "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x}[prediction_type]
    torch.testing.assert_close(d.training_target(x, t, noise), expected)
    seen = {}

    def model(x_t, t_):
        seen["x_t"] = x_t
        return torch.zeros_like(x_t)

    loss = d.p_losses(model, x, t, noise, "l2")
    torch.testing.assert_close(loss, (expected**2).mean())
    torch.testing.assert_close(seen["x_t"], d.q_sample(x, t, noise))


@pytest.mark.parametrize("prediction_type,weight", [
    ("epsilon", lambda snr, g: torch.minimum(snr, g) / snr), ("sample", lambda snr, g: torch.minimum(snr, g)),
    ("v_prediction", lambda snr, g: torch.minimum(snr, g) / (snr + 1))])
def test_min_snr_gamma_weighs_each_sample(prediction_type, weight):
    # Hang et al. 2023 (and diffusers' training scripts): the weight of the loss of each sample.
    d = GaussianDiffusion(200, prediction_type=prediction_type)
    x, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 20, 100, 199])
    abar = d.alphas_cumprod[t]
    snr = abar / (1 - abar)
    w = weight(snr, torch.tensor(5.0))
    torch.testing.assert_close(d.min_snr_weights(t, 5.0), w)
    pred = torch.randn_like(x)
    target = d.training_target(x, t, noise)
    expected = (((pred - target).abs().flatten(1).mean(1)) * w).mean()
    torch.testing.assert_close(d.p_losses(lambda x_t, t_: pred, x, t, noise, "l1", min_snr_gamma=5.0), expected)
    with pytest.raises(ValueError, match=r"min_snr_gamma must be a number > 0"):
        d.p_losses(lambda x_t, t_: pred, x, t, noise, "l1", min_snr_gamma=0)


def test_sample_returns_every_step_indexable_like_the_seed():
    d = GaussianDiffusion(10)
    model = Unet(dim=8, channels=1, dim_mults=(1, 2)).eval()
    samples = d.sample(model, image_size=8, batch_size=3, channels=1, progress=False)
    assert samples.shape == (10, 3, 1, 8, 8) and samples.device.type == "cpu"
    assert samples[-1][2].shape == (1, 8, 8)
    assert torch.isfinite(samples).all()
    final = d.sample(model, 8, batch_size=3, channels=1, return_all_timesteps=False, progress=False)
    assert final.shape == (3, 1, 8, 8)
