"""``pytest benchmarks --benchmark-only``: reference vs fused vs torch.compile, per workload.

``fused+compile`` is torch.compile (default mode) of the accelerated U-Net: the two combine.

The peers (benchmarks/peers.py, the ``[peers]`` extra: onnxruntime, openvino, openvino-bf16,
compile-freezing, compile-freezing-cpp) run on the CPU, on the U-Net forward groups and the
DDPM and DDIM-50 loops, in fp32 and, in the ``-bf16-`` groups (CPU only), in bf16: every path
under bf16 autocast, OpenVINO in bf16. Each is checked against the reference before it is timed,
and skips with the reason when it cannot run here (a missing package, no bf16). A peer that
fails to export or compile is reported as xfailed with the error. The big cases of the
comparison (forward at b16 and up, bf16 from b4, the peers' loops, the bf16 loops, DDIM-50 in
full) run on the CPU with ``--full-peers`` only.
Every U-Net forward row records its GFLOP/s and the machine's measured sgemm peak.

Every group runs on the CPU (small but real sizes, so a machine without a GPU measures
something) and, when a GPU is present, on CUDA at full size.
"""

import time

import pytest
import torch

from conftest import RESULTS, device_name
from peers import PEERS, unavailable
from workloads import BUILDERS, PEER_LOOP_GROUPS, full_run_only, precision_skip_reason
from ddpm_fast import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["reference", "fused", "fused+graph", "fused+compile", "compile-default",
         "compile-reduce-overhead", "compile-max-autotune", *PEERS]
HEAVY = ("sampling", "train-step")
WHOLE_MODEL = HEAVY + ("unet-forward",)


def skip_reason(group, impl, device, full_peers=False):
    """Why (group, impl, device) does not run, or None."""
    reason = precision_skip_reason(group, impl, device)
    if reason:
        return reason
    if impl in PEERS:
        if not (group.startswith("unet-forward") or group in PEER_LOOP_GROUPS):
            return "the peers are timed on the unet-forward groups and the DDPM and DDIM-50 loops"
        reason = unavailable(impl, torch.device(device))
        if reason:
            return reason
    if device == "cpu" and full_run_only(group, impl) and not full_peers:
        return "a big case of the peer comparison on the CPU: run with --full-peers"
    if device == "cuda" and group == "sampling-ddim50-full-b64":
        return "on CUDA, sampling-ddim50-b64 already runs all 50 steps"
    if impl.startswith("fused") and device not in ops.compiled_backends():
        return f"no compiled {device} kernels ({ops.load_error() or 'backend not built'})"
    if impl == "fused+graph":
        if device != "cuda":
            return "CUDA graphs need a GPU"
        if not group.startswith("sampling"):
            return "the CUDA-graph path is the sampler's"
    if impl == "fused+compile" and not group.startswith(WHOLE_MODEL):
        return "fused+compile (torch.compile of the accelerated U-Net) is timed on the whole-model groups"
    if device == "cpu" and group.startswith(HEAVY) and impl in ("compile-reduce-overhead", "compile-max-autotune"):
        # Each mode recompiles the whole U-Net (forward and backward for training): about a
        # minute or more per workload on a 2-core CPU, past the suite's 10-minute budget.
        return f"{impl} of the whole U-Net is skipped on the CPU: its compile time would break the 10-minute budget"
    if device == "cpu" and group.startswith("unet-forward") and impl.startswith("compile-") and impl not in PEERS:
        return f"{impl}: compile-freezing(-cpp) is torch.compile's entry on the CPU forward groups"
    return None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("group", list(BUILDERS))
def test_benchmark(benchmark, workloads, copy_bandwidth, sgemm_peak, full_peers, group, impl, device):
    reason = skip_reason(group, impl, device, full_peers)
    if reason:
        pytest.skip(reason)
    workload = workloads(group, device)
    extra = dict(impl=impl, device_name=device_name(torch.device(device)), torch=torch.__version__,
                 **workload.extra)
    if impl == "fused":
        workload.check()  # once per group, outside the timing
    if impl in PEERS:
        start = time.perf_counter()
        try:
            workload.check_peer(impl)  # builds the peer (export, session, compile), then compares
        except AssertionError:
            raise  # a peer that computes something else is a failure
        except Exception as error:  # one that cannot export or compile here is reported
            pytest.xfail(f"{impl} failed before timing: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
        extra["setup_s"] = time.perf_counter() - start
    fn = workload.make(impl)
    if device == "cpu":
        extra.update(cpu_isa=ops.cpu_isa(), torch_cpu_isa=torch.backends.cpu.get_cpu_capability())
    start = time.perf_counter()
    try:
        fn()  # compiles, for the compile modes; warms up the rest
    except Exception as error:  # a compile mode that does not work here is reported, not fatal
        if "compile" in impl:
            pytest.skip(f"{impl} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        raise
    if "compile" in impl and impl not in PEERS:  # a peer compiled in its check: setup_s
        extra["compile_s"] = time.perf_counter() - start
    fn()  # a second warm-up run
    if "bytes" in extra:
        extra["copy_bandwidth_GBps"] = copy_bandwidth(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    heavy = group.startswith(HEAVY) or workload.extra.get("batch", 0) >= 64
    # CPU timings here vary by tens of percent between runs: take several rounds of each.
    rounds = (5 if heavy else 15) if device == "cpu" else (5 if heavy else 50)
    benchmark.group = group
    benchmark.pedantic(fn, rounds=rounds, iterations=1)
    if device == "cuda" and group.startswith("train-step"):
        extra["peak_memory_MB"] = torch.cuda.max_memory_allocated() / 2**20
    if "flops_per_image" in extra:  # a U-Net forward: GFLOP/s against the measured sgemm peak
        extra["gflops"] = extra["flops_per_image"] * extra["batch"] / benchmark.stats.stats.median / 1e9
        extra["sgemm_peak_gflops"] = sgemm_peak(device)
    benchmark.extra_info.update(extra)
    RESULTS.append(dict(group=group, impl=impl, device=extra["device_name"],
                        median=benchmark.stats.stats.median, extra=extra))
