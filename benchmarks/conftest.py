"""Fixtures of the benchmark suite and the ratio table printed at its end."""

import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from peers import sgemm_peak_gflops  # noqa: E402
from report import flops_lines, markdown  # noqa: E402
from workloads import BUILDERS, synchronize  # noqa: E402

from ddpm_fast import ops  # noqa: E402
from ddpm_fast.ops.cpu_report import processor_name  # noqa: E402

RESULTS = []  # rows for the closing table, filled by the benchmarks


def pytest_addoption(parser):
    parser.addoption("--full-peers", action="store_true",
                     help="also time the big cases of the peer comparison: the U-Net forward at b16, b64 "
                          "and b128 (bf16 from b4), the peers' sampling loops, the bf16 loops and DDIM-50 in "
                          "full (default: forward at b1 and b4, bf16 at b1)")


@pytest.fixture(scope="session")
def full_peers(request):
    return request.config.getoption("--full-peers")


@pytest.fixture(scope="session")
def sgemm_peak():
    """The device's measured fp32 matmul peak in GFLOP/s (best of a few 2048x2048 torch.mm)."""
    return lambda device: sgemm_peak_gflops(device=device)  # measured once per device


def device_name(device):
    """The GPU's name, or the processor with its threads and the instruction-set level of
    ddpm_fast's CPU kernels and of torch's (one README table per combination)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"CPU {processor_name()} x{torch.get_num_threads()} threads, ddpm_fast {ops.cpu_isa()}, "
            f"torch {torch.backends.cpu.get_cpu_capability()}")


@pytest.fixture(scope="session")
def workloads():
    """Each (group, device) workload is built once per session."""
    cache = {}

    def get(group, device):
        if (group, device) not in cache:
            cache[(group, device)] = BUILDERS[group](torch.device(device))
        return cache[(group, device)]

    return get


@pytest.fixture(scope="session")
def copy_bandwidth():
    """The device's measured copy bandwidth in GB/s (read + write of a large buffer)."""
    cache = {}

    def get(device):
        if device not in cache:
            n = 1 << 28  # bytes: 256 MiB, past any cache, so this is memory bandwidth
            src = torch.empty(n // 4, device=device)
            dst = torch.empty_like(src)
            dst.copy_(src)
            synchronize(torch.device(device))
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                dst.copy_(src)
                synchronize(torch.device(device))
                best = min(best, time.perf_counter() - start)
            cache[device] = 2 * n / best / 1e9
        return cache[device]

    return get


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.write_sep("=", "ddpm_fast: speed-ups per workload (median times)")
        terminalreporter.write_line(markdown(RESULTS))
        lines = flops_lines(RESULTS)
        if lines:
            terminalreporter.write_sep("=", "ddpm_fast: U-Net forward GFLOP/s against the measured sgemm peak")
            for line in lines:
                terminalreporter.write_line(line)
