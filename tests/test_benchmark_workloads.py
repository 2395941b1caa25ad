"""The benchmark suite's fused, reference and peer workloads compute the same thing (CPU sizes)."""

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import peers  # noqa: E402
from workloads import BUILDERS  # noqa: E402

from ddpm_fast import ops  # noqa: E402

# Groups whose check is too slow for the tests, with the checks that cover them.
UNCHECKED = {"sampling-ddim50-full-b64": "50 DDIM steps at b64 twice (about a minute here); DDIM at b64 is "
                                         "checked by sampling-ddim50-b64 and the 50 steps by sampling-ddim50-full-b1"}
# The peers' small cases: the forward at b1, a DDPM loop (20 steps) and DDIM-50 in full at b1.
PEER_GROUPS = ("unet-forward-b1", "sampling-loop-b1", "sampling-ddim50-full-b1")


@functools.lru_cache(maxsize=None)
def cpu_workload(group):
    return BUILDERS[group](torch.device("cpu"))


@pytest.mark.skipif(not ops.compiled_ops_loaded(), reason="compiled extension not built")
@pytest.mark.parametrize("group", list(BUILDERS))
def test_workload_fused_matches_reference(group):
    if group in UNCHECKED:
        pytest.skip(UNCHECKED[group])
    cpu_workload(group).check()


@pytest.mark.parametrize("impl", peers.PEERS)
@pytest.mark.parametrize("group", PEER_GROUPS)
def test_peer_workload_matches_reference(group, impl):
    """Each peer (ONNX Runtime, OpenVINO, compile-freezing) against the reference, as the suite
    checks it before timing; skips when the peer's package (the [peers] extra) is missing. A peer
    that cannot export or compile here is an xfail that carries the error."""
    reason = peers.unavailable(impl)
    if reason:
        pytest.skip(reason)
    try:
        cpu_workload(group).check_peer(impl)
    except AssertionError:
        raise
    except Exception as error:
        pytest.xfail(f"{impl} failed: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")


def test_peers_report_missing_packages(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert "onnxruntime" in peers.unavailable("onnxruntime")
    assert peers.unavailable("compile-freezing") is None


def test_report_turns_rows_into_a_ratio_table():
    import report

    rows = [dict(group="g", impl=impl, device="d", median=m, extra={})
            for impl, m in (("reference", 2.0), ("compile-default", 1.0), ("fused", 0.5))]
    table = report.markdown(rows)
    assert "| g | fused | 500.00 ms | 4.00x | 2.00x |  |" in table
    assert "| g | reference | 2000.00 ms | 1.00x | 0.50x |  |" in table


def test_report_gives_gflops_against_the_sgemm_peak():
    import report

    extra = dict(batch=4, flops_per_image=5e8, gflops=40.0, sgemm_peak_gflops=160.0)
    rows = [dict(group="unet-forward-b4", impl="onnxruntime", device="d", median=0.05, extra=extra)]
    assert "40.0 GFLOP/s (25% of sgemm)" in report.markdown(rows)
    (line,) = report.flops_lines(rows)
    assert "50.00 ms" in line and "80.0 img/s" in line and "25.0% of sgemm peak (160 GFLOP/s)" in line
