"""The reference U-Net against the blog's code: same module tree, same weights, same output."""

import pytest
import torch

import blog_code
from ddpm_fast import Unet

CONFIGS = {
    "convnext": dict(dim=28, channels=1, dim_mults=(1, 2, 4)),
    "resnet-g8": dict(dim=32, channels=1, dim_mults=(1, 2, 4), use_convnext=False, resnet_block_groups=8),
    "resnet-g4": dict(dim=28, channels=1, dim_mults=(1, 2, 4), use_convnext=False, resnet_block_groups=4),
}


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_matches_seed(name):
    torch.manual_seed(0)
    assert shapes(Unet(**CONFIGS[name])) == shapes(blog_code.Unet(**CONFIGS[name]))


def test_state_dict_pinned_for_seed_config():
    # A few entries written out, so a change to both copies is still caught.
    s = shapes(Unet(**CONFIGS["convnext"]))
    assert len(s) == 220
    assert s["init_conv.weight"] == (18, 1, 7, 7)
    assert s["downs.0.0.ds_conv.weight"] == (18, 1, 7, 7)
    assert s["downs.0.2.fn.fn.to_qkv.weight"] == (384, 28, 1, 1)
    assert s["downs.0.2.fn.fn.to_out.1.weight"] == (28,)
    assert s["mid_attn.fn.fn.to_out.weight"] == (112, 128, 1, 1)
    assert s["ups.1.0.net.1.weight"] == (56, 112, 3, 3)
    assert s["final_conv.1.weight"] == (1, 28, 1, 1)


def test_state_dict_pinned_for_resnet_config():
    s = shapes(Unet(**CONFIGS["resnet-g8"]))
    assert len(s) == 194
    assert s["downs.0.0.block1.proj.weight"] == (32, 20, 3, 3)
    assert s["downs.0.0.block1.norm.weight"] == (32,)
    assert s["downs.0.0.mlp.1.weight"] == (32, 128)
    assert s["downs.0.0.res_conv.weight"] == (32, 20, 1, 1)


@pytest.mark.parametrize("name", CONFIGS)
def test_seed_weights_load_strictly_and_give_the_same_output(name):
    torch.manual_seed(0)
    seed_model = blog_code.Unet(**CONFIGS[name]).eval()
    ours = Unet(**CONFIGS[name]).eval()
    ours.load_state_dict(seed_model.state_dict(), strict=True)
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([0, 57, 199])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), seed_model(x, t), rtol=0, atol=0)


def test_resnet_groups_that_do_not_divide_channels():
    with pytest.raises(ValueError, match=r"resnet_block_groups=8 must divide"):
        Unet(dim=28, channels=1, dim_mults=(1, 2, 4), use_convnext=False, resnet_block_groups=8)


def test_image_size_that_does_not_round_trip():
    model = Unet(dim=28, channels=1, dim_mults=(1, 2, 4, 8))
    with pytest.raises(ValueError, match=r"28x28 must be divisible by 8"):
        model(torch.randn(1, 1, 28, 28), torch.tensor([0]))


def test_wrong_channel_count():
    model = Unet(dim=16, channels=1, dim_mults=(1, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, H, W\)"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([0]))
