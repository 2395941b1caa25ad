"""``pytest benchmarks --benchmark-only``: reference vs fused vs torch.compile, per workload.

``fused+compile`` is torch.compile (default mode) of the accelerated U-Net: the two combine.

Every group runs on the CPU (small but real sizes, so a machine without a GPU measures
something) and, when a GPU is present, on CUDA at full size.
"""

import time

import pytest
import torch

from conftest import RESULTS, device_name
from workloads import BUILDERS
from ddpm_fast import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["reference", "fused", "fused+graph", "fused+compile", "compile-default",
         "compile-reduce-overhead", "compile-max-autotune"]
HEAVY = ("sampling", "train-step")


def skip_reason(group, impl, device):
    """Why (group, impl, device) does not run, or None."""
    if impl.startswith("fused") and device not in ops.compiled_backends():
        return f"no compiled {device} kernels ({ops.load_error() or 'backend not built'})"
    if impl == "fused+graph":
        if device != "cuda":
            return "CUDA graphs need a GPU"
        if not group.startswith("sampling"):
            return "the CUDA-graph path is the sampler's"
    if impl == "fused+compile" and not group.startswith(HEAVY):
        return "fused+compile (torch.compile of the accelerated U-Net) is timed on the whole-model groups"
    if device == "cpu" and group.startswith(HEAVY) and impl in ("compile-reduce-overhead", "compile-max-autotune"):
        # Each mode recompiles the whole U-Net (forward and backward for training): about a
        # minute or more per workload on a 2-core CPU, past the suite's 10-minute budget.
        return f"{impl} of the whole U-Net is skipped on the CPU: its compile time would break the 10-minute budget"
    return None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("group", list(BUILDERS))
def test_benchmark(benchmark, workloads, copy_bandwidth, group, impl, device):
    reason = skip_reason(group, impl, device)
    if reason:
        pytest.skip(reason)
    workload = workloads(group, device)
    if impl == "fused":
        workload.check()  # once per group, outside the timing
    fn = workload.make(impl)
    extra = dict(impl=impl, device_name=device_name(torch.device(device)), torch=torch.__version__,
                 **workload.extra)
    if device == "cpu":
        extra.update(cpu_isa=ops.cpu_isa(), torch_cpu_isa=torch.backends.cpu.get_cpu_capability())
    start = time.perf_counter()
    try:
        fn()  # compiles, for the compile modes; warms up the rest
    except Exception as error:  # a compile mode that does not work here is reported, not fatal
        if "compile" in impl:
            pytest.skip(f"{impl} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        raise
    if "compile" in impl:
        extra["compile_s"] = time.perf_counter() - start
    fn()  # a second warm-up run
    if "bytes" in extra:
        extra["copy_bandwidth_GBps"] = copy_bandwidth(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    heavy = group.startswith(HEAVY)
    # CPU timings here vary by tens of percent between runs: take several rounds of each.
    rounds = (5 if heavy else 15) if device == "cpu" else (5 if heavy else 50)
    benchmark.group = group
    benchmark.pedantic(fn, rounds=rounds, iterations=1)
    if device == "cuda" and group.startswith("train-step"):
        extra["peak_memory_MB"] = torch.cuda.max_memory_allocated() / 2**20
    benchmark.extra_info.update(extra)
    RESULTS.append(dict(group=group, impl=impl, device=extra["device_name"],
                        median=benchmark.stats.stats.median, extra=extra))
