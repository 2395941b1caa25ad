"""The benchmark suite's fused, reference and peer workloads compute the same thing (CPU sizes)."""

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import peers  # noqa: E402
from workloads import BUILDERS, precision_skip_reason  # noqa: E402

from ddpm_fast import ops  # noqa: E402

# Groups whose check is too slow for the tests, with the checks that cover them.
UNCHECKED = {"sampling-ddim50-full-b64": "50 DDIM steps at b64 twice (about a minute here); DDIM at b64 is "
                                         "checked by sampling-ddim50-b64 and the 50 steps by sampling-ddim50-full-b1"}
# The peers' small cases: the forward at b1, a DDPM loop (20 steps) and DDIM-50 in full at b1;
# the forward and the DDPM loop in bf16.
PEER_GROUPS = ("unet-forward-b1", "sampling-loop-b1", "sampling-ddim50-full-b1",
               "unet-forward-bf16-b1", "sampling-loop-bf16-b1")


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
    reason = precision_skip_reason(group, impl, "cpu") or peers.unavailable(impl)
    if reason:
        pytest.skip(reason)
    try:
        cpu_workload(group).check_peer(impl)
    except AssertionError:
        raise
    except Exception as error:
        pytest.xfail(f"{impl} failed: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")


def test_each_peer_is_timed_in_its_own_precisions():
    assert "fp32" in precision_skip_reason("unet-forward-bf16-b1", "onnxruntime", "cpu")
    assert "bf16" in precision_skip_reason("unet-forward-b1", "openvino-bf16", "cpu")
    assert "CPU" in precision_skip_reason("unet-forward-bf16-b1", "reference", "cuda")
    assert precision_skip_reason("unet-forward-bf16-b1", "compile-freezing", "cpu") is None
    assert precision_skip_reason("sampling-loop-b1", "onnxruntime", "cpu") is None
    with pytest.raises(ValueError, match="runs in fp32"):
        peers.forward("openvino", torch.nn.Linear(1, 1), 1, "bf16")


def test_peers_report_missing_packages(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert "onnxruntime" in peers.unavailable("onnxruntime")
    assert peers.unavailable("compile-freezing") is None


def test_openvino_is_not_run_under_a_capped_onednn(monkeypatch):
    # at_cpu_isa.py avx2 sets ONEDNN_MAX_CPU_ISA, under which OpenVINO segfaulted on an AVX-512 CPU.
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # every package "installed"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    for impl in ("openvino", "openvino-bf16"):
        assert "ONEDNN_MAX_CPU_ISA" in peers.unavailable(impl)
    assert peers.unavailable("onnxruntime") is None


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


def test_peers_table_puts_bf16_rows_after_fp32_and_compares_within_a_row():
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    import peers_table

    cells = {"unet-forward-bf16-b1": {"reference": 0.02, "fused": 0.01, "openvino-bf16": 0.012},
             "unet-forward-b4": {"fused": 0.03, "onnxruntime": 0.06},
             "unet-forward-b1": {"fused": 0.02, "onnxruntime": 0.01}}
    lines = peers_table.table("h", cells).splitlines()
    rows = [line for line in lines if line.startswith("| b") and not line.startswith("| batch")]
    assert [row.split(" | ")[0] for row in rows] == ["| b1", "| b4", "| bf16 b1"]
    assert rows[2].endswith("| 1.20x (fused vs openvino-bf16) |")
    assert rows[0].endswith("| 0.50x (fused vs onnxruntime) |")
