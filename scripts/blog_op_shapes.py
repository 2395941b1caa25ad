"""Every fused op call of the blog's U-Net (accelerated), at its own shapes: fused against the
reference, forward and forward+backward, median of interleaved runs in one process.

    python scripts/at_cpu_isa.py avx2 -- python scripts/blog_op_shapes.py --batch 64

The calls are recorded from one training step of the accelerated blog config (dim 28, 28x28,
dim_mults 1,2,4), deduplicated by op, shapes, layout and arguments. A ratio below 1 is a shape
at which accelerate() would make that op slower than the reference.
"""

import argparse
import copy
import statistics
import time

import torch

from ddpm_fast import GaussianDiffusion, Unet, ops
from ddpm_fast.ops import reference
from ddpm_fast.ops.cpu_report import processor_name
from ddpm_fast.model import accelerate

RECORDED = ("group_norm_act", "projected_linear_attention", "linear_attention", "sampler_update", "q_sample")


def record_calls(batch):
    """(op name, args) of each distinct fused op call in one seed-config training step."""
    torch.manual_seed(0)
    model = accelerate(Unet(dim=28, channels=1, dim_mults=(1, 2, 4)))
    diffusion = GaussianDiffusion(200)
    calls, seen, originals = [], set(), {name: getattr(ops, name) for name in RECORDED}

    def recorder(name):
        def call(*args):
            key = (name,) + tuple((tuple(a.shape), a.stride(), a.dtype) if torch.is_tensor(a) else
                                  (a is None if not isinstance(a, (int, float, str)) else a) for a in args)
            if key not in seen:
                seen.add(key)
                calls.append((name, tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args)))
            return originals[name](*args)
        return call

    for name in RECORDED:
        setattr(ops, name, recorder(name))
    try:
        x = torch.randn(batch, 1, 28, 28)
        diffusion.p_losses(model, x, torch.randint(0, 200, (batch,)), loss_type="huber").backward()
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)
    return calls


def describe(name, args):
    shapes = [("cl" if a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last)
               else "") + "x".join(map(str, a.shape)) for a in args if torch.is_tensor(a) and a.dim() >= 2][:2]
    flags = [str(a) for a in args if isinstance(a, str)]
    return f"{name}({', '.join(shapes + flags)})"


def runner(fn, args, backward):
    def run():
        if not backward:
            with torch.no_grad():
                return fn(*args)
        leaves = [a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        out = fn(*leaves)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(torch.ones_like(out))
    return run


def median_pair(a, b, repeat):
    a(), b()
    times = ([], [])
    for _ in range(repeat):
        for i, fn in enumerate((a, b)):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print(f"{processor_name()}, {torch.get_num_threads()} threads; torch kernels at "
          f"{torch.backends.cpu.get_cpu_capability()}, ddpm_fast kernels at {ops.cpu_isa()}; blog config, batch {args.batch}")
    print("| op call | pass | reference | fused | reference / fused |")
    print("|---|---|---:|---:|---:|")
    for name, call_args in record_calls(args.batch):
        passes = [False] + ([True] if name in ("group_norm_act", "projected_linear_attention", "linear_attention") else [])
        for backward in passes:
            ref_s, fused_s = median_pair(runner(getattr(reference, name), call_args, backward),
                                         runner(getattr(ops, name), call_args, backward), args.repeat)
            print(f"| {describe(name, call_args)} | {'fwd+bwd' if backward else 'fwd'} | {ref_s * 1e3:.3f} ms "
                  f"| {fused_s * 1e3:.3f} ms | {ref_s / fused_s:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
