"""PrepackedConv2d / PrepackedConvTranspose2d: oneDNN on weights packed once, for CPU inference.

Each is compared with its parent class (the reference with the same signature), on the shapes
the U-Nets use and on those that bite; and the cache is checked to follow the weights.
"""

import copy
import itertools
import pickle

import pytest
import torch
from torch import nn

from ddpm_fast import Unet, accelerate
from ddpm_fast.model import PrepackedConv2d, PrepackedConvTranspose2d
from ddpm_fast.ops import policy

pytestmark = pytest.mark.skipif(not policy.cpu_prepacks_convolutions(),
                                reason="no prepacking here (torch's baseline CPU level, or no oneDNN)")

CONVS = {
    "3x3": (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, padding=1)),
    "7x7-one-channel": (nn.Conv2d, dict(in_channels=1, out_channels=6, kernel_size=7, padding=3)),
    "7x7-depthwise": (nn.Conv2d, dict(in_channels=6, out_channels=6, kernel_size=7, padding=3, groups=6)),
    "4x4-stride-2": (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1)),
    "1x1-no-bias": (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=1, bias=False)),
    "dilated-grouped": (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=2)),
    "transpose-4x4": (nn.ConvTranspose2d, dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1)),
    "transpose-output-padding": (nn.ConvTranspose2d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2,
                                                          padding=1, output_padding=1, groups=2)),
}
PACKED = {nn.Conv2d: PrepackedConv2d, nn.ConvTranspose2d: PrepackedConvTranspose2d}


def pair(name, channels_last_weight):
    torch.manual_seed(0)
    cls, kwargs = CONVS[name]
    conv = cls(**kwargs)
    if channels_last_weight:
        conv = conv.to(memory_format=torch.channels_last)
    return conv, PACKED[cls].from_conv(copy.deepcopy(conv))


def packed_shapes(module):
    return len(module._packed)


@pytest.mark.parametrize("name", CONVS)
@pytest.mark.parametrize("weight_cl, x_cl", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("batch", [1, 3, 0])
def test_matches_the_parent_class_values_and_strides(name, weight_cl, x_cl, batch):
    conv, packed = pair(name, weight_cl)
    x = torch.randn(batch, conv.in_channels, 9, 7)
    if x_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, y = conv(x), packed(x)
    torch.testing.assert_close(y, expected)
    assert y.stride() == expected.stride()


def test_the_seed_unet_forward_runs_packed_and_matches_the_unpacked_one():
    torch.manual_seed(0)
    plain = accelerate(Unet(dim=28, channels=1, dim_mults=(1, 2, 4)).eval(), prepack=False)
    packed = accelerate(copy.deepcopy(plain).eval())
    assert list(packed.state_dict()) == list(plain.state_dict())
    for batch in (1, 4):
        x, t = torch.randn(batch, 1, 28, 28), torch.randint(0, 200, (batch,))
        with torch.no_grad():
            expected, y = plain(x, t), packed(x, t)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
        assert y.stride() == expected.stride()
    ran_packed = [m for m in packed.modules() if isinstance(m, (PrepackedConv2d, PrepackedConvTranspose2d))
                  and packed_shapes(m)]
    assert len(ran_packed) > 20  # every 3x3, 7x7 and 4x4 conv after the first one


def test_bf16_autocast_matches_autocasts_own_convolution():
    """Under CPU bf16 autocast the packed path computes in bf16, as autocast's conv policy does;
    its error against a float64 oracle is at most twice that of the parent class under autocast
    (flash-attention's rule)."""
    conv, packed = pair("3x3", True)
    x = torch.randn(2, 4, 9, 7).contiguous(memory_format=torch.channels_last)
    oracle = copy.deepcopy(conv).double()(x.double())
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        expected, y = conv(x), packed(x)
    assert y.dtype == expected.dtype == torch.bfloat16 and packed_shapes(packed) == 1
    assert (y.double() - oracle).abs().max() <= 2 * (expected.double() - oracle).abs().max() + 1e-6


def test_an_in_place_weight_change_repacks():
    """An optimizer step or load_state_dict writes the weight in place; a stale packed weight
    would keep giving the old output."""
    conv, packed = pair("3x3", True)
    x = torch.randn(2, 4, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        packed(x)
        packed.weight.mul_(2)
        packed.bias.add_(1)
        conv.weight.mul_(2)
        conv.bias.add_(1)
        torch.testing.assert_close(packed(x), conv(x))
    packed.load_state_dict({k: torch.randn_like(v) for k, v in conv.state_dict().items()})
    with torch.no_grad():
        expected = nn.functional.conv2d(x, packed.weight, packed.bias, padding=1)
        torch.testing.assert_close(packed(x), expected)


def test_training_runs_the_parent_forward_with_gradients():
    conv, packed = pair("3x3", True)
    x = torch.randn(2, 4, 9, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    packed(x).square().sum().backward()
    assert packed_shapes(packed) == 0
    conv(x.detach().requires_grad_()).square().sum().backward()
    torch.testing.assert_close(packed.weight.grad, conv.weight.grad)


def test_unpackable_calls_run_the_parent_forward():
    conv, packed = pair("3x3", True)
    x = torch.randn(2, 4, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        permuted = torch.randn(9, 7, 2, 4).permute(2, 3, 0, 1)  # neither NCHW nor channels_last
        torch.testing.assert_close(packed(permuted), conv(permuted))
        torch.testing.assert_close(packed.double()(x.double()), conv.double()(x.double()))  # float64
    assert packed_shapes(packed) == 0
    with torch.inference_mode():  # parameters made here are inference tensors: no version counter
        made_here = PrepackedConv2d(4, 6, 3, padding=1).to(memory_format=torch.channels_last)
        made_here(x)
        assert packed_shapes(made_here) == 0


def test_a_sweep_over_many_shapes_stays_bounded_and_correct():
    from ddpm_fast.model import prepacked_conv

    conv, packed = pair("3x3", True)
    with torch.no_grad():
        for batch in range(1, prepacked_conv.MAX_PACKED_SHAPES + 3):
            x = torch.randn(batch, 4, 9, 7).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(packed(x), conv(x))
            assert packed_shapes(packed) <= prepacked_conv.MAX_PACKED_SHAPES


def test_deepcopy_and_pickle_after_a_packed_call():
    conv, packed = pair("transpose-4x4", True)
    x = torch.randn(2, 4, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = packed(x)
        assert packed_shapes(packed) == 1
        for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
            assert type(clone) is PrepackedConvTranspose2d and packed_shapes(clone) == 0
            torch.testing.assert_close(clone(x), expected)


def test_accelerate_prepacks_only_cpu_models_and_only_when_asked():
    model = accelerate(Unet(dim=8, channels=1, dim_mults=(1, 2)))
    assert any(isinstance(m, PrepackedConv2d) for m in model.modules())
    assert any(isinstance(m, PrepackedConvTranspose2d) for m in model.modules())
    assert not any(type(m) in (nn.Conv2d, nn.ConvTranspose2d) for m in model.modules())
    plain = accelerate(Unet(dim=8, channels=1, dim_mults=(1, 2)), prepack=False)
    assert not any(isinstance(m, (PrepackedConv2d, PrepackedConvTranspose2d)) for m in plain.modules())
    meta = accelerate(Unet(dim=8, channels=1, dim_mults=(1, 2)).to("meta"))
    assert not any(isinstance(m, (PrepackedConv2d, PrepackedConvTranspose2d)) for m in meta.modules())
