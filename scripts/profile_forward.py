"""Time one U-Net forward of the blog's config, reference against accelerated (and accelerated
without its prepacked convolutions), side by side, and optionally show where the time goes
(torch.profiler, one row per op and input shape).

    python scripts/profile_forward.py --batch 64 --profile
    python scripts/profile_forward.py --batch 1 --rounds 200 --bf16

Timings alternate between the models in one process, one forward each in turn, and report the
minimum and median of the rounds, the only comparison that holds on a shared, noisy machine.
Forwards run under no_grad, as the samplers run them. Use it before optimising: the benchmark
suite says how fast, this says why.
"""

import argparse
import copy
import statistics
import time

import torch
from torch.profiler import profile

from ddpm_fast import Unet, accelerate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print the accelerated forward's top ops")
    parser.add_argument("--rows", type=int, default=20, help="rows of the profile table")
    parser.add_argument("--bf16", action="store_true", help="every model under CPU bf16 autocast")
    args = parser.parse_args()

    torch.manual_seed(0)
    reference = Unet(dim=28, channels=1, dim_mults=(1, 2, 4)).eval()
    fused = accelerate(copy.deepcopy(reference))
    x = torch.randn(args.batch, 1, 28, 28)
    t = torch.randint(0, 200, (args.batch,))
    models = {"reference": reference, "accelerated": fused,
              "unprepacked": accelerate(copy.deepcopy(reference), prepack=False)}
    times = {name: [] for name in models}
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=args.bf16)
    with torch.no_grad(), autocast:
        for model in models.values():
            model(x, t)  # warm-up: first-call allocations and oneDNN primitive creation
        for _ in range(args.rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(x, t)
                times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        print(f"{name:12s} min {min(ts) * 1e3:8.1f} ms   median {statistics.median(ts) * 1e3:8.1f} ms")
    for name in ("reference", "unprepacked"):
        ratio = statistics.median(times[name]) / statistics.median(times["accelerated"])
        print(f"accelerated vs {name} (medians): {ratio:.2f}x")

    if args.profile:
        with torch.no_grad(), autocast, profile(record_shapes=True) as prof:
            fused(x, t)
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
