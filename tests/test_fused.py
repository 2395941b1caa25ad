"""accelerate(): fused U-Nets (ours and the blog's own classes) against the reference."""

import copy

import pytest
import torch

import blog_code
from ddpm_fast import GaussianDiffusion, Unet, ops
from ddpm_fast.model import FusedBlock, FusedGroupNorm, FusedLinearAttention, accelerate

CONFIGS = {
    "convnext": dict(dim=28, channels=1, dim_mults=(1, 2, 4)),
    "resnet-g8": dict(dim=16, channels=1, dim_mults=(1, 2), use_convnext=False, resnet_block_groups=8),
    "resnet-g4": dict(dim=12, channels=1, dim_mults=(1, 2), use_convnext=False, resnet_block_groups=4),
}


def fused_pair(unet_cls, config, channels_last):
    torch.manual_seed(0)
    ref = unet_cls(**config)
    # Non-trivial affine weights, so that a kernel ignoring them would be caught.
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return ref, accelerate(copy.deepcopy(ref), channels_last=channels_last)


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("unet_cls", [Unet, blog_code.Unet], ids=["ours", "seed-classes"])
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_unet_matches_reference(unet_cls, name, channels_last):
    ref, fused = fused_pair(unet_cls, CONFIGS[name], channels_last)
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert count(fused, FusedLinearAttention) == len(ref.downs) + len(ref.ups)
    if name.startswith("resnet"):
        assert count(fused, FusedBlock) > 0
    assert not any(type(m) is torch.nn.GroupNorm for m in fused.modules())

    size = 28 if name == "convnext" else 8
    x = torch.randn(3, 1, size, size)
    t = torch.tensor([0, 99, 199])
    y_ref, y = ref(x, t), fused(x, t)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(y)
    y_ref.backward(grad)
    y.backward(grad)
    fused_params = dict(fused.named_parameters())
    for name_, p in ref.named_parameters():
        torch.testing.assert_close(fused_params[name_].grad, p.grad, atol=2e-4, rtol=2e-3, msg=name_)


def test_accelerate_keeps_parameters_and_optimizer_state():
    model = Unet(**CONFIGS["resnet-g8"])
    before = {n: p for n, p in model.named_parameters()}
    accelerate(model, channels_last=False)
    after = dict(model.named_parameters())
    assert before.keys() == after.keys()
    assert all(before[n] is after[n] for n in before)


def test_fused_block_applies_scale_shift():
    block = blog_code.Block(8, 16, groups=4)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
    fused = accelerate(copy.deepcopy(torch.nn.Sequential(block)), channels_last=False)[0]
    assert isinstance(fused, FusedBlock)
    x = torch.randn(2, 8, 7, 7)
    scale_shift = (torch.randn(2, 16, 1, 1), torch.randn(2, 16, 1, 1))
    torch.testing.assert_close(fused(x, scale_shift), block(x, scale_shift), atol=1e-5, rtol=1e-5)


def test_uncovered_inputs_fall_back_to_the_reference():
    norm = FusedGroupNorm(2, 8, act="silu")
    x = torch.randn(3, 8, 5)  # 3-D: not covered by the kernel
    torch.testing.assert_close(norm(x), torch.nn.functional.silu(torch.nn.functional.group_norm(x, 2, norm.weight, norm.bias)))
    x4 = torch.randn(2, 8, 3, 3, dtype=torch.float16)  # no fp16 CPU kernel
    expected = torch.nn.functional.silu(torch.nn.functional.group_norm(x4.float(), 2, None, None).to(torch.float16))
    torch.testing.assert_close(norm(x4), expected)


@pytest.mark.skipif(not ops.compiled_ops_loaded(), reason="compiled extension not built")
def test_accelerated_unet_compiles_without_graph_breaks():
    ref, fused = fused_pair(Unet, dict(dim=8, channels=1, dim_mults=(1, 2)), channels_last=True)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 150])
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, t), ref(x, t), atol=1e-4, rtol=1e-4)
    # Training through the compiled graph: the fused ops' autograd formulas trace too.
    compiled(x, t).square().mean().backward()
    ref(x, t).square().mean().backward()
    for (name, p_ref), p_fused in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(p_fused.grad, p_ref.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_fused_diffusion_sampling_matches_reference():
    torch.manual_seed(0)
    model = Unet(dim=8, channels=1, dim_mults=(1, 2)).eval()
    fused_model = accelerate(copy.deepcopy(model))
    runs = []
    for m, fused in ((model, False), (fused_model, None)):
        torch.manual_seed(1)
        runs.append(GaussianDiffusion(20, fused=fused).sample(m, 8, batch_size=2, channels=1, progress=False))
    torch.testing.assert_close(runs[0], runs[1], atol=1e-4, rtol=1e-4)


def test_readme_usage_runs():
    """The README's Python example, at a small size."""
    import ddpm_fast

    model = ddpm_fast.Unet(dim=8, channels=1, dim_mults=(1, 2))
    diffusion = ddpm_fast.GaussianDiffusion(timesteps=10)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.randint(0, 10, (x0.shape[0],))
    diffusion.p_losses(model, x0, t, loss_type="huber").backward()
    assert ddpm_fast.accelerate(model) is model
    samples = diffusion.sample(model, image_size=8, batch_size=2, channels=1, progress=False)
    assert samples[-1].shape == (2, 1, 8, 8)
    final = diffusion.sample(model, 8, batch_size=2, channels=1, sampler="dpm-solver++", steps=5,
                             generator=torch.Generator().manual_seed(0), return_all_timesteps=False, progress=False)
    assert final.shape == (2, 1, 8, 8)
