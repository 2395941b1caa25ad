"""Time the fused CPU group_norm_act against the reference, in float32 and bf16, at U-Net shapes.

    python scripts/cpu_bf16_group_norm.py

Median ms of 50 calls each, torch's threads as set (OMP_NUM_THREADS); name the processor and
ISA (lscpu, ddpm_fast.cpu_report()) with the figures.
"""

import time

import torch

from ddpm_fast import ops
from ddpm_fast.ops import reference

CASES = [  # (N, C, H, G, act)
    (32, 64, 28, 1, "gelu"),
    (32, 64, 28, 8, "silu"),
    (64, 112, 14, 1, "none"),
]


def median_ms(fn, calls=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[calls // 2] * 1e3


def main():
    print("shape (N, C, H=W, groups, act), layout: fp32 fused / reference | bf16 fused / reference (ms)")
    for n, c, h, g, act in CASES:
        for channels_last in (False, True):
            row = []
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(n, c, h, h, dtype=dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                weight, bias = torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
                scale, shift = torch.randn(n, c, dtype=dtype), torch.randn(n, c, dtype=dtype)
                args = (x, g, weight, bias, scale, shift, 1e-5, act)
                row += [median_ms(lambda: ops.group_norm_act(*args)), median_ms(lambda: reference.group_norm_act(*args))]
            layout = "channels_last" if channels_last else "nchw"
            print(f"{(n, c, h, g, act)} {layout}: {row[0]:.2f} / {row[1]:.2f} | {row[2]:.2f} / {row[3]:.2f}"
                  f"  (bf16 fused {row[3] / row[2]:.1f}x the bf16 reference)")


if __name__ == "__main__":
    main()
