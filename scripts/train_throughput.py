"""Training throughput on one device: images/s of `ddpm-fast train` in fp32, bf16 and fp16,
with the pure-PyTorch reference and with the fused ops.

Each combination is a short real run of ddpm_fast.train.train() (the loop the CLI runs) in a
temporary folder; the figure is the median images/s of its metrics.csv rows after the first,
which holds the warm-up. The data are the bundled digits, resized to --image-size: the cost of
a step depends on the shapes only. Defaults are the blog's Fashion-MNIST configuration
(28x28, dim 28, dim_mults 1,2,4, batch 128).

    python scripts/train_throughput.py --device cuda --out train-throughput.json
    python scripts/train_throughput.py --device cpu --precisions fp32,bf16 --steps 12 --log-every 2

Prints one line per combination to stderr and the JSON to stdout (and to --out PATH).
"""

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import ddpm_fast
from ddpm_fast.train.precision import PRECISIONS
from ddpm_fast.train.record import METRICS_NAME, read_metrics
from ddpm_fast.train import TrainConfig, pick_device, train

IMPLS = ("reference", "fused")


def _names(text, allowed, what):
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{what}: expected a comma-separated subset of {allowed}, got {text!r}")
    return names


def device_description(device):
    """The accelerator's name, or the CPU's model, ISA level and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def measure(args, precision, impl, device):
    """images/s of one short training run: median, and every logged interval after the first."""
    with tempfile.TemporaryDirectory() as out_dir:
        config = TrainConfig(
            dataset="digits", image_size=args.image_size, dim=args.dim, dim_mults=args.dim_mults,
            batch_size=args.batch_size, steps=args.steps, log_every=args.log_every,
            save_and_sample_every=args.steps + 1, num_samples=1, precision=precision,
            accelerate=impl == "fused", device=str(device), out_dir=out_dir)
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the loop's log lines; stdout is the JSON's
            train(config, progress=False)
        wall = time.perf_counter() - start
        rows = read_metrics(Path(out_dir) / METRICS_NAME)
    intervals = [row["images_per_s"] for row in rows[1:]]
    if not intervals:
        raise ValueError(f"--steps {args.steps} with --log-every {args.log_every} logs fewer than "
                         "2 intervals; raise --steps")
    return {"precision": precision, "impl": impl, "images_per_s": statistics.median(intervals),
            "intervals_images_per_s": intervals, "wall_s": wall}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--precisions", type=lambda t: _names(t, PRECISIONS, "--precisions"),
                        default=list(PRECISIONS), help="default: fp32,bf16,fp16")
    parser.add_argument("--impls", type=lambda t: _names(t, IMPLS, "--impls"), default=list(IMPLS),
                        help="default: reference,fused")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--dim", type=int, default=28)
    parser.add_argument("--dim-mults", type=lambda t: tuple(int(m) for m in t.split(",")), default=(1, 2, 4))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=120, help="steps per run (default 120)")
    parser.add_argument("--log-every", type=int, default=20, help="steps per timed interval (default 20)")
    parser.add_argument("--out", help="write the JSON to this file as well as to stdout")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    if "fused" in args.impls and device.type not in ddpm_fast.compiled_backends():
        parser.error(f"no compiled kernels for {device.type} (compiled backends: "
                     f"{ddpm_fast.compiled_backends()}); pass --impls reference")
    runs = []
    for precision in args.precisions:
        for impl in args.impls:
            run = measure(args, precision, impl, device)
            print(f"{precision:4} {impl:9} {run['images_per_s']:8.1f} images/s", file=sys.stderr)
            runs.append(run)
    result = {
        "device": device_description(device),
        "torch": torch.__version__,
        "workload": {k: getattr(args, k) for k in ("image_size", "dim", "dim_mults", "batch_size",
                                                    "steps", "log_every")},
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
