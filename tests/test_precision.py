"""Mixed precision, compile and gradient accumulation in training: the fused ops under autocast
against the reference (CPU, and CUDA where present), bf16 and fp16 runs, --compile and
--grad-accum."""

import copy

import pytest
import torch

from compare_runs import assert_trained_alike, initial_weights
from ddpm_fast import GaussianDiffusion, Unet, accelerate, ops
from ddpm_fast.train.precision import autocast
from ddpm_fast.train import TrainConfig, load_checkpoint, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in ops.compiled_backends() else [])
CONFIGS = {
    "convnext": dict(dim=16, channels=1, dim_mults=(1, 2)),
    "resnet": dict(dim=16, channels=1, dim_mults=(1, 2), use_convnext=False, resnet_block_groups=4),
}
TINY = dict(image_size=8, dim=8, dim_mults=(1, 2), timesteps=10, device="cpu", num_samples=4)


def loss_and_grads(model, diffusion, batch, dtype, device):
    """The blog's training loss of ``model`` under autocast to ``dtype`` (float64: no autocast,
    the oracle), and its parameter gradients, all in float64."""
    x_start, t, noise = (v.to(device) for v in batch)
    denoise = model
    if dtype == torch.float64:
        x_start, noise = x_start.double(), noise.double()
        # A float64 U-Net needs a float64 time embedding, so float64 timesteps.
        denoise = lambda x, t: model(x, t.double())  # noqa: E731
    model.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float64):
        loss = diffusion.p_losses(denoise, x_start, t, noise=noise, loss_type="huber")
    loss.backward()
    return loss.detach().double(), {n: p.grad.double() for n, p in model.named_parameters()}


@pytest.mark.skipif(not ops.compiled_ops_loaded(), reason="compiled extension not built")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", CONFIGS)
def test_a_fused_training_step_under_autocast_is_as_accurate_as_the_reference(device, dtype, name):
    """flash-attention's rule: against a float64 oracle, the accelerated model's loss and
    gradient under autocast err at most twice as much as the reference model's (or, for the
    loss, one rounding of the dtype).

    Per parameter tensor the bound is 4x: where the CPU has no 16-bit kernel, the fused
    GroupNorm runs reference.group_norm_act, whose affine and activation round to 16 bits
    while nn.GroupNorm's run in float32 under autocast; a few tensors then err up to ~3.5x,
    while the gradient as a whole errs as much as the reference's. A layer computed wrongly
    errs by orders of magnitude more.
    """
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    reference = Unet(**CONFIGS[name])
    with torch.no_grad():  # non-trivial GroupNorm weights, so that a kernel ignoring them shows
        for m in reference.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    oracle = copy.deepcopy(reference).double().to(device)
    fused = accelerate(copy.deepcopy(reference).to(device))
    reference = reference.to(device)
    batch = (torch.rand(8, 1, 8, 8) * 2 - 1, torch.randint(0, 200, (8,)), torch.randn(8, 1, 8, 8))
    diffusion = GaussianDiffusion(200).to(device)
    reference_diffusion = GaussianDiffusion(200, fused=False).to(device)

    exact_loss, exact = loss_and_grads(oracle, reference_diffusion, batch, torch.float64, device)
    ref_loss, ref = loss_and_grads(reference, reference_diffusion, batch, dtype, device)
    got_loss, got = loss_and_grads(fused, diffusion, batch, dtype, device)
    rounding = torch.finfo(dtype).eps * abs(exact_loss)
    assert abs(got_loss - exact_loss) <= 2 * abs(ref_loss - exact_loss) + rounding

    def error(grads, names=exact):
        return torch.cat([(grads[n] - exact[n]).flatten() for n in names]).norm()

    assert error(got) <= 2 * error(ref), (error(got), error(ref))
    for param in exact:
        assert error(got, [param]) <= 4 * error(ref, [param]), (param, error(got, [param]), error(ref, [param]))


def test_autocast_runs_the_accelerated_unet_in_bf16_on_the_cpu():
    model = accelerate(Unet(dim=8, channels=1, dim_mults=(1, 2)))
    with autocast(torch.device("cpu"), "bf16"):
        out = model(torch.randn(2, 1, 8, 8), torch.tensor([0, 5]))
    assert out.dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert model(torch.randn(2, 1, 8, 8), torch.tensor([0, 5])).dtype == torch.float32


def test_bf16_autocast_training_lowers_the_loss(tmp_path):
    # T = 50 and lr = 3e-3 make the loss fall within 100 steps (to about 0.7 of its start).
    config = dict(TINY, timesteps=50)
    _, _, history = train(TrainConfig(**config, batch_size=32, lr=3e-3, steps=100, log_every=5,
                                      save_and_sample_every=1000, precision="bf16",
                                      out_dir=str(tmp_path)), progress=False)
    losses = [loss for _, loss in history]
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:2]) / 2, losses


def test_fp16_training_keeps_its_grad_scaler_across_resume(tmp_path):
    config = TrainConfig(**TINY, batch_size=16, steps=2, log_every=1, save_and_sample_every=1000,
                         precision="fp16", out_dir=str(tmp_path))
    train(config, progress=False)
    scaler = load_checkpoint(tmp_path / "checkpoint.pt")["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] == 2  # 2 steps without overflow
    config.steps = 3
    _, _, history = train(config, resume=True, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["scaler"]["_growth_tracker"] == 3
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in history)


def test_grad_accum_matches_one_big_batch(tmp_path):
    config = dict(TINY, batch_size=16, log_every=1, save_and_sample_every=1000)
    runs = {accum: train(TrainConfig(**config, grad_accum=accum, steps=3,
                                     out_dir=str(tmp_path / str(accum))), progress=False)
            for accum in (1, 4)}
    (whole, _, whole_history), (accumulated, _, accumulated_history) = runs[1], runs[4]
    assert_trained_alike(accumulated.state_dict(), whole.state_dict(),
                         initial_weights(tmp_path / "initial", **config))
    torch.testing.assert_close(torch.tensor(accumulated_history), torch.tensor(whole_history),
                               rtol=1e-5, atol=0)


def test_compile_trains_through_the_compiled_model(tmp_path, monkeypatch):
    # aot_eager traces what inductor would (dynamo, the fused ops' fake kernels and autograd
    # formulas) without generating code, which takes minutes on 2 cores.
    compiled, real_compile = [], torch.compile

    def compile_cheaply(model, **kwargs):
        compiled.append(model)
        return real_compile(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr("ddpm_fast.train.loop.torch.compile", compile_cheaply)
    config = dict(TINY, batch_size=16, grad_accum=2, steps=2, log_every=1, save_and_sample_every=1000)
    model, _, history = train(TrainConfig(**config, compile=True, out_dir=str(tmp_path / "c")),
                              progress=False)
    assert len(compiled) == 1 and compiled[0] is model
    monkeypatch.undo()
    eager, _, eager_history = train(TrainConfig(**config, out_dir=str(tmp_path / "e")), progress=False)
    torch.testing.assert_close(torch.tensor(history), torch.tensor(eager_history), rtol=1e-5, atol=0)
    assert list(load_checkpoint(tmp_path / "c" / "checkpoint.pt")["model"]) == list(eager.state_dict())
