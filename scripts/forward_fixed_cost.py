"""The fixed cost of one eager U-Net forward: the seed U-Net at a few pixels, where the compute is
negligible, against its real 28x28 size, reference and accelerate()d, at batch 1.

    python scripts/forward_fixed_cost.py

Median ms of 200 forwards under no_grad, at torch's threads; name the processor and ISA with the
figures. What remains at 4x4 is Python, dispatch and per-op fixed costs.
"""

import copy
import time

import torch

from ddpm_fast import Unet
from ddpm_fast.model import accelerate

SEED_CONFIG = dict(dim=28, channels=1, dim_mults=(1, 2, 4))  # benchmarks/workloads.py's


def median_ms(model, x, t, calls=200):
    with torch.no_grad():
        for _ in range(20):
            model(x, t)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            model(x, t)
            times.append(time.perf_counter() - start)
    return sorted(times)[calls // 2] * 1e3


def main():
    torch.manual_seed(0)
    reference = Unet(**SEED_CONFIG).eval()
    fused = accelerate(copy.deepcopy(reference)).eval()
    t = torch.randint(0, 200, (1,))
    for size in (4, 28):
        x = torch.randn(1, 1, size, size)
        print(f"b1 {size}x{size}: reference {median_ms(reference, x, t):.2f} ms, "
              f"accelerate() {median_ms(fused, x, t):.2f} ms")


if __name__ == "__main__":
    main()
