"""torch.compile with inductor's freezing on an accelerated, channels_last U-Net (issue 18).

A 1-channel image is both NCHW and channels_last. With the first conv's weight strided
channels_last, oneDNN returned a channels_last output where inductor's dynamic-batch freezing
path expected NCHW, and the recompile for the second batch size failed a stride assertion.
"""

import pytest
import torch

from ddpm_fast import Unet, accelerate, ops


def _inductor_cpp_compiler():
    try:
        from torch._inductor import cpp_builder

        return cpp_builder.get_cpp_compiler()
    except Exception:  # noqa: BLE001 - any failure means inductor cannot build CPU kernels
        return None


def _small_unet():
    return Unet(dim=8, channels=1, dim_mults=(1, 2)).eval()


def test_one_input_channel_conv_keeps_nchw_weight_strides():
    model = accelerate(_small_unet(), channels_last=True)
    first = model.init_conv.weight
    assert first.stride() == torch.empty(first.shape).stride()  # NCHW strides
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            assert module.weight.is_contiguous(memory_format=torch.channels_last)
            if module.weight.shape[1] > 1 and module.kernel_size != (1, 1):
                assert not module.weight.is_contiguous()


@pytest.mark.skipif(not ops.compiled_ops_loaded(), reason="compiled extension not built")
@pytest.mark.skipif(_inductor_cpp_compiler() is None, reason="inductor finds no C++ compiler")
def test_freezing_compile_survives_batch_size_changes():
    model = accelerate(_small_unet(), channels_last=True)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        for batch in (1, 4, 3):
            x = torch.randn(batch, 1, 16, 16)
            t = torch.randint(0, 200, (batch,))
            torch.testing.assert_close(compiled(x, t), model(x, t))
    torch._dynamo.reset()
