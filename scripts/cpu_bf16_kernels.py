"""Time the fused CPU kernels that take bf16 against the reference, in float32 and bf16: GroupNorm
+ activation and both linear-attention ops at the seed U-Net's shapes, then the whole seed U-Net
forward (accelerate()d against the reference, in float32 and under bf16 autocast, as
``--precision bf16`` runs it: the seed's time embedding is float32, so the model is not cast).

    python scripts/cpu_bf16_kernels.py

Median ms of 50 calls each, torch's threads as set (OMP_NUM_THREADS), under
no_grad; name the processor and ISA (lscpu, ddpm_fast.cpu_report()) with the figures.
"""

import copy
import time

import torch

from ddpm_fast import Unet, accelerate, ops
from ddpm_fast.ops import reference

GROUP_NORM_CASES = [  # (N, C, H, G, act)
    (32, 64, 28, 1, "gelu"),
    (32, 64, 28, 8, "silu"),
    (64, 112, 14, 1, "none"),
]
# (N, C, H): the seed's LinearAttention (4 heads of 32) at its first two resolutions.
ATTENTION_CASES = [(16, 28, 28), (32, 56, 14)]
HEADS, DIM_HEAD = 4, 32


def median_ms(fn, calls=50):
    with torch.no_grad():
        for _ in range(3):
            fn()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return sorted(times)[calls // 2] * 1e3


def report(name, make):
    """One line: make(dtype) -> (fused, reference) zero-argument callables, timed in both dtypes."""
    row = []
    for dtype in (torch.float32, torch.bfloat16):
        fused, ref = make(dtype)
        row += [median_ms(fused), median_ms(ref)]
    print(f"{name}: {row[0]:.2f} / {row[1]:.2f} | {row[2]:.2f} / {row[3]:.2f}"
          f"  (bf16 fused {row[3] / row[2]:.1f}x the bf16 reference)", flush=True)


def group_norm(n, c, h, g, act, memory_format):
    def make(dtype):
        x = torch.randn(n, c, h, h, dtype=dtype).contiguous(memory_format=memory_format)
        weight, bias = torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
        scale, shift = torch.randn(n, c, dtype=dtype), torch.randn(n, c, dtype=dtype)
        args = (x, g, weight, bias, scale, shift, 1e-5, act)
        return lambda: ops.group_norm_act(*args), lambda: reference.group_norm_act(*args)
    return make


def linear_attention(n, c, h):
    def make(dtype):
        qkv = torch.randn(n, 3 * HEADS * DIM_HEAD, h, h, dtype=dtype)
        return (lambda: ops.linear_attention(qkv, HEADS, DIM_HEAD**-0.5),
                lambda: reference.linear_attention(qkv, HEADS, DIM_HEAD**-0.5))
    return make


def projected_attention(n, c, h, memory_format):
    def make(dtype):
        x = torch.randn(n, c, h, h, dtype=dtype).contiguous(memory_format=memory_format)
        w = torch.randn(3 * HEADS * DIM_HEAD, c, 1, 1, dtype=dtype) / c**0.5
        return (lambda: ops.projected_linear_attention(x, w, HEADS, DIM_HEAD**-0.5),
                lambda: reference.projected_linear_attention(x, w, HEADS, DIM_HEAD**-0.5))
    return make


def unet_forward(batch):
    torch.manual_seed(0)
    model = Unet(dim=28, channels=1, dim_mults=(1, 2, 4)).eval()

    fused = accelerate(copy.deepcopy(model))
    x = torch.randn(batch, 1, 28, 28)
    t = torch.randint(0, 200, (batch,))

    def make(dtype):
        def run(net):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                return net(x, t)
        return lambda: run(fused), lambda: run(model)
    return make


def main():
    print("case, layout: fp32 fused / reference | bf16 fused / reference (ms)")
    for n, c, h, g, act in GROUP_NORM_CASES:
        for memory_format in (torch.contiguous_format, torch.channels_last):
            layout = "channels_last" if memory_format == torch.channels_last else "nchw"
            report(f"group_norm_act {(n, c, h, g, act)} {layout}", group_norm(n, c, h, g, act, memory_format))
    for n, c, h in ATTENTION_CASES:
        report(f"linear_attention {(n, 3 * HEADS * DIM_HEAD, h)} nchw", linear_attention(n, c, h))
        for memory_format in (torch.contiguous_format, torch.channels_last):
            layout = "channels_last" if memory_format == torch.channels_last else "nchw"
            report(f"projected_linear_attention {(n, c, h)} {layout}", projected_attention(n, c, h, memory_format))
    for batch in (1, 16):
        report(f"U-Net forward b{batch} (seed config, 28x28; bf16 = autocast), accelerate() vs reference", unet_forward(batch))


if __name__ == "__main__":
    main()
