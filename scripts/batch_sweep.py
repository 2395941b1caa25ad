"""One DDPM sampling step of the blog's U-Net at every batch size from 1 to 128: the reference,
``torch.compile`` of the reference, the fused path (``accelerate()`` + fused update) and
``torch.compile`` of the fused path, median of interleaved runs in one process.

    python scripts/at_cpu_isa.py avx2 -- python scripts/batch_sweep.py

Each compiled model is compiled afresh for its batch size (static shapes, mode "default"), so
no timing includes a recompilation. Prints a markdown table with the processor and the levels
of torch's kernels and ddpm_fast's; "best / compile" is the faster of the two fused columns
against compile of the reference (above 1: ddpm_fast is faster).
"""

import argparse
import copy
import statistics
import time

import torch
from tqdm import tqdm

from ddpm_fast import GaussianDiffusion, Unet, ops
from ddpm_fast.ops.cpu_report import processor_name
from ddpm_fast.model import accelerate

IMPLS = ("reference", "compile", "fused", "fused+compile")


def step_functions(batch, models):
    """A sampling step (model forward + reverse update at t = 100) per implementation."""
    x = torch.randn(batch, 1, 28, 28)
    t = torch.full((batch,), 100, dtype=torch.long)
    diffusions = {False: GaussianDiffusion(200, fused=False), True: GaussianDiffusion(200, fused=None)}
    functions = {}
    for impl in IMPLS:
        fused = impl.startswith("fused")
        net = models[fused]
        if impl.endswith("compile"):
            torch._dynamo.reset()  # a fresh static-shape compile for this batch size
            net = torch.compile(copy.deepcopy(net), dynamic=False)

        def step(net=net, diffusion=diffusions[fused]):
            with torch.no_grad():
                return diffusion.p_sample(net, x, t, 100)

        step()  # compiles (and warms) here, outside the timing
        functions[impl] = step
    return functions


def interleaved_medians(functions, repeat):
    times = {name: [] for name in functions}
    for _ in range(repeat):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128",
                        help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per implementation and batch")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    torch.manual_seed(0)
    model = Unet(dim=28, channels=1, dim_mults=(1, 2, 4)).eval()
    models = {False: model, True: accelerate(copy.deepcopy(model))}
    print(f"{processor_name()}, {torch.get_num_threads()} threads; torch kernels at "
          f"{torch.backends.cpu.get_cpu_capability()}, ddpm_fast kernels at {ops.cpu_isa()}; "
          f"blog config, one sampling step, median of {args.repeat}")
    print("| batch | " + " | ".join(IMPLS) + " | fused / compile | best / compile |")
    print("|---:|" + "---:|" * (len(IMPLS) + 2))
    for batch in tqdm(batches, desc="batch sizes", leave=False):
        medians = interleaved_medians(step_functions(batch, models), args.repeat)
        compile_s = medians["compile"]
        best = min(medians["fused"], medians["fused+compile"])
        cells = " | ".join(f"{medians[name] * 1e3:.2f} ms" for name in IMPLS)
        tqdm.write(f"| {batch} | {cells} | {compile_s / medians['fused']:.2f}x | {compile_s / best:.2f}x |")


if __name__ == "__main__":
    main()
