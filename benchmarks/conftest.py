"""Fixtures of the benchmark suite and the ratio table printed at its end."""

import platform
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from report import markdown  # noqa: E402
from workloads import BUILDERS, synchronize  # noqa: E402

RESULTS = []  # rows for the closing table, filled by the benchmarks


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


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
