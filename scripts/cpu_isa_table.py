"""Reference against fused (accelerate() + fused ops) on the CPU, at the shapes of the CPU ISA
table and of the benchmark suite's op groups: median of interleaved runs in one process.

Run it under scripts/at_cpu_isa.py to hold ddpm_fast's kernels and torch's to one level:

    python scripts/at_cpu_isa.py avx2 -- python scripts/cpu_isa_table.py
    python scripts/at_cpu_isa.py avx2 -- python scripts/cpu_isa_table.py --rows attention --repeat 9

Prints a markdown table with the processor, the level of each side and the ratio
reference / fused (above 1: fused is faster).
"""

import argparse
import copy
import statistics
import time

import torch

import ddpm_fast
from ddpm_fast import GaussianDiffusion, Unet, ops
from ddpm_fast.ops import reference
from ddpm_fast.ops.cpu_report import processor_name
from ddpm_fast.model import accelerate


def train_step_row(config, image, batch):
    torch.manual_seed(0)
    model = Unet(**config)
    fused = accelerate(copy.deepcopy(model))
    x = torch.randn(batch, config["channels"], image, image)
    t = torch.randint(0, 200, (batch,))
    noise = torch.randn_like(x)

    def make(net, fused_ops):
        diffusion = GaussianDiffusion(200, fused=fused_ops)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            diffusion.p_losses(net, x, t, noise=noise, loss_type="huber").backward()
            optimizer.step()

        return step

    return make(model, False), make(fused, None)


def forward_row(config, image, batch):
    torch.manual_seed(0)
    model = Unet(**config).eval()
    fused = accelerate(copy.deepcopy(model))
    x = torch.randn(batch, config["channels"], image, image)
    t = torch.randint(0, 200, (batch,))

    def make(net):
        def forward():
            with torch.no_grad():
                net(x, t)

        return forward

    return make(model), make(fused)


def op_row(ref_fn, fused_fn, args, backward=False):
    def make(fn):
        def run():
            if not backward:
                with torch.no_grad():
                    fn(*args)
                return
            leaves = [a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            out = fn(*leaves)
            out.backward(torch.ones_like(out))

        return run

    return make(ref_fn), make(fused_fn)


SEED = dict(dim=28, channels=1, dim_mults=(1, 2, 4))
README = dict(dim=16, channels=1, dim_mults=(1, 2))


def rows():
    """(name, family, builder) of every row; builders return (reference, fused) callables."""
    qkv64 = lambda: torch.randn(64, 3 * 128, 28, 28)  # noqa: E731
    x64 = lambda: torch.randn(64, 28, 28, 28).contiguous(memory_format=torch.channels_last)  # noqa: E731
    w = lambda: torch.randn(3 * 128, 28, 1, 1) / 28 ** 0.5  # noqa: E731
    gn = lambda n: (torch.randn(n, 64, 28, 28), 8, torch.rand(64) + 0.5, torch.randn(64),  # noqa: E731
                    torch.randn(n, 64), torch.randn(n, 64), 1e-5, "silu")
    return [
        ("train step, blog config, b128", "model", lambda: train_step_row(SEED, 28, 128)),
        ("train step, README config (dim 16, 8x8), b128", "model", lambda: train_step_row(README, 8, 128)),
        ("forward, blog config, b64", "model", lambda: forward_row(SEED, 28, 64)),
        ("forward, blog config, b1", "model", lambda: forward_row(SEED, 28, 1)),
        ("projected_linear_attention, 64x28x28x28, 4 heads x 32", "attention",
         lambda: op_row(reference.projected_linear_attention, ops.projected_linear_attention, (x64(), w(), 4, 32 ** -0.5))),
        ("linear_attention core, 64x384x28x28", "attention",
         lambda: op_row(reference.linear_attention, ops.linear_attention, (qkv64(), 4, 32 ** -0.5))),
        ("linear_attention fwd+bwd, 16x384x28x28", "attention",
         lambda: op_row(reference.linear_attention, ops.linear_attention, (torch.randn(16, 384, 28, 28), 4, 32 ** -0.5), True)),
        ("group_norm_act fwd, 32x64x28x28, G=8, silu", "norm",
         lambda: op_row(reference.group_norm_act, ops.group_norm_act, gn(32))),
        ("group_norm_act fwd+bwd, 32x64x28x28", "norm",
         lambda: op_row(reference.group_norm_act, ops.group_norm_act, gn(32), True)),
        ("group_norm_act fwd, channels_last 64x28x28x28, G=1", "norm",
         lambda: op_row(reference.group_norm_act, ops.group_norm_act,
                        (x64(), 1, torch.rand(28) + 0.5, torch.randn(28), None, None, 1e-5, "none"))),
    ]


def median_pair(reference_fn, fused_fn, repeat):
    reference_fn(), fused_fn()  # warm up (allocations, first-call costs)
    times = {"reference": [], "fused": []}
    for _ in range(repeat):  # interleaved, so drifts in machine load hit both alike
        for name, fn in (("reference", reference_fn), ("fused", fused_fn)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["reference"]), statistics.median(times["fused"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="model,attention,norm", help="families to run: model, attention, norm")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved runs of each side (default 5)")
    args = parser.parse_args()
    families = set(args.rows.split(","))
    print(f"{processor_name()}, {torch.get_num_threads()} threads; torch {torch.__version__} kernels at "
          f"{torch.backends.cpu.get_cpu_capability()}, ddpm_fast kernels at {ddpm_fast.ops.cpu_isa()}")
    print("| workload | reference | fused | reference / fused |")
    print("|---|---:|---:|---:|")
    for name, family, build in rows():
        if family not in families:
            continue
        ref_ms, fused_ms = (1e3 * t for t in median_pair(*build(), args.repeat))
        print(f"| {name} | {ref_ms:.1f} ms | {fused_ms:.1f} ms | {ref_ms / fused_ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
