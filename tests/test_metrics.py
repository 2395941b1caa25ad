"""The offline quality measure: the Fréchet distance, its cached classifier, that it tells a
trained model from a barely trained one, and the evaluate command."""

import copy
import json
from pathlib import Path

import pytest
import torch

from ddpm_fast import GaussianDiffusion, Unet, cli
from ddpm_fast import evaluate as metrics
from ddpm_fast.diffusion import DPMSolverPlusPlusSampler
from ddpm_fast.evaluate import classifier
from ddpm_fast.model import accelerate
from ddpm_fast.ops import compiled_ops_loaded
from ddpm_fast.train import TrainConfig, load_checkpoint, train, unet_kwargs

# A short classifier training keeps CI fast; it still classifies the held-out digits well.
ITERATIONS = 400


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A classifier cache of this module's own, with the short training as the default."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DDPM_FAST_CACHE", str(path))
        patch.setattr(classifier, "CLASSIFIER_ITERATIONS", ITERATIONS)
        yield path


@pytest.fixture(scope="module")
def measure(cache):
    return metrics.QualityMeasure("digits", 8, progress=False)


def trained(tmp_path_factory, steps):
    """A digits U-Net after ``steps`` training steps (EMA weights), as a plain (reference) Unet.

    400 steps at lr 2e-3 with EMA 0.98 is about half a minute: far from the README's model, but
    its FD is already half a barely trained model's."""
    config = TrainConfig(image_size=8, dim=16, dim_mults=(1, 2), batch_size=64, lr=2e-3, ema_decay=0.98,
                         steps=steps, timesteps=200, save_and_sample_every=10**6, num_samples=1,
                         out_dir=str(tmp_path_factory.mktemp("run")))
    train(config, progress=False)
    plain = Unet(**unet_kwargs(config, 8))
    plain.load_state_dict(load_checkpoint(Path(config.out_dir) / "checkpoint.pt")["ema"])
    return plain.eval()


def test_frechet_distance_closed_forms():
    a = torch.randn(500, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    shift = torch.randn(6, dtype=torch.float64)
    assert abs(metrics.frechet_distance(a, a)) < 1e-9
    # Same covariance: only the means differ.
    assert metrics.frechet_distance(a, a + shift) == pytest.approx((a.mean(0) + shift - a.mean(0)).square().sum().item())
    # Covariance scaled by 4: tr(S + 4S - 2 * 2S) = tr(S), plus the means' distance.
    cov = torch.cov(a.T)
    expected = (a.mean(0)).square().sum() + cov.trace()
    assert metrics.frechet_distance(a, 2 * a) == pytest.approx(expected.item())
    # Against the general formula with scipy's matrix square root.
    scipy_linalg = pytest.importorskip("scipy.linalg")
    b = torch.randn(400, 6, dtype=torch.float64) * 2 + 1
    cov_b = torch.cov(b.T)
    root = scipy_linalg.sqrtm((cov @ cov_b).numpy()).real
    general = (a.mean(0) - b.mean(0)).square().sum() + cov.trace() + cov_b.trace() - 2 * float(root.trace())
    assert metrics.frechet_distance(a, b) == pytest.approx(general.item(), rel=1e-6)


def test_classifier_is_trained_once_then_cached(cache, measure, monkeypatch):
    assert measure.accuracy > 0.9
    assert list(cache.glob(f"classifier-digits-8px-{ITERATIONS}it-v*.pt"))
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("retrained a cached classifier"))
    again = metrics.QualityMeasure("digits", 8, progress=False)
    assert again.accuracy == measure.accuracy and again.noise_floor == measure.noise_floor
    assert measure.num_reference == 1797 // 2 and measure.noise_floor > 0


def test_real_images_score_near_the_floor_and_noise_far_above(measure):
    from ddpm_fast.data import load_dataset

    real = load_dataset("digits", 8).images
    noise = torch.randn(measure.num_reference, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert measure.score(noise) > 10 * measure.noise_floor
    assert measure.score(real[: measure.num_reference]) < 2 * measure.noise_floor


def test_fused_and_reference_samplers_score_alike_and_training_shows(tmp_path_factory, measure):
    """The quality test: the fused sampler (and accelerated model) scores the reference's FD
    within the spread over seeds, and a barely trained model scores clearly worse."""
    model = trained(tmp_path_factory, 400)
    bad = trained(tmp_path_factory, 10)
    kwargs = dict(sampler=DPMSolverPlusPlusSampler(steps=10), num=300, seeds=range(3), batch_size=300, progress=False)
    reference, _ = metrics.evaluate(model, GaussianDiffusion(200, fused=False), measure, **kwargs)
    assert len(reference["fd"]) == 3 and reference["classifier_accuracy"] == measure.accuracy
    if compiled_ops_loaded():
        fused, _ = metrics.evaluate(accelerate(copy.deepcopy(model)), GaussianDiffusion(200, fused=True), measure,
                                    **kwargs)
        spread = max(reference["fd_std"], fused["fd_std"])
        assert abs(fused["fd_mean"] - reference["fd_mean"]) <= spread, (fused["fd"], reference["fd"])
    untrained, _ = metrics.evaluate(bad, GaussianDiffusion(200), measure, **kwargs)
    assert untrained["fd_mean"] > 1.5 * reference["fd_mean"], (untrained["fd"], reference["fd"])
    assert untrained["fd_mean"] - reference["fd_mean"] > 5 * max(untrained["fd_std"], reference["fd_std"])


def test_cli_evaluate_prints_and_writes_json(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--steps", "3",
                     "--timesteps", "20", "--batch-size", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    path = tmp_path / "score.json"
    assert cli.main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--sampler", "dpm-solver++",
                     "--steps", "5", "--num", "20", "--repeats", "2", "--batch-size", "8", "--out", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "FD " in printed and "noise floor" in printed and "held-out accuracy" in printed
    result = json.loads(path.read_text())
    assert result["sampler"] == "dpm-solver++" and result["steps"] == 5 and len(result["fd"]) == 2
    assert result["num"] == 20 and result["seconds_per_batch"] > 0 and result["classifier_accuracy"] > 0.9
    assert cli.main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--num", "1"]) == 2
    assert "--num must be at least 2" in capsys.readouterr().err
