"""The instruction-set levels of the CPU kernels: choosing one, forcing torch's to match, and
what cpu_report() tells the user. (tests/test_ops.py runs every op at every level.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ddpm_fast
from ddpm_fast import ops

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not ops.compiled_ops_loaded(), reason="compiled extension not built")


def run_python(code, **env):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out


def test_levels_and_setting_one():
    levels = ops.supported_cpu_isas()
    assert levels[0] == "default" and set(levels) <= {"default", "avx2", "avx512"}
    assert ops.cpu_isa() == levels[-1] or "DDPM_FAST_CPU_ISA" in os.environ
    with ops.using_cpu_isa("default"):
        assert ops.cpu_isa() == "default"
    with pytest.raises(ValueError, match="level must be 'avx512', 'avx2' or 'default', got 'sse4'"):
        ops.set_cpu_isa("sse4")


def test_the_environment_variable_chooses_the_level_and_a_bad_one_warns():
    out = run_python("from ddpm_fast import ops; print(ops.cpu_isa())", DDPM_FAST_CPU_ISA="default")
    assert out.stdout.strip() == "default"
    out = run_python("from ddpm_fast import ops; print(ops.cpu_isa())", DDPM_FAST_CPU_ISA="sse4")
    assert out.stdout.strip() == ops.supported_cpu_isas()[-1]
    assert "DDPM_FAST_CPU_ISA=sse4 is not one of avx512, avx2, default" in out.stderr


@pytest.mark.parametrize("level", ["default", "avx2"])
def test_at_cpu_isa_holds_torch_to_the_same_level(level):
    if level not in ops.supported_cpu_isas():
        pytest.skip(f"this processor has no {level}")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "at_cpu_isa.py"), level, "--", sys.executable, "-c",
                          "import torch; from ddpm_fast import ops; "
                          "print(ops.cpu_isa(), torch.backends.cpu.get_cpu_capability())"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [level, level.upper()]


def assert_only_above_torchs_baseline(code):
    """``code`` prints False at torch's baseline level and True at AVX2 (where the CPU has it)."""
    assert run_python(code, ATEN_CPU_CAPABILITY="default").stdout.strip() == "False"
    if "avx2" in ops.supported_cpu_isas():
        assert run_python(code, ATEN_CPU_CAPABILITY="avx2").stdout.strip() == "True"


def test_accelerate_keeps_nchw_where_channels_last_convolutions_are_slower():
    assert_only_above_torchs_baseline(
        "import torch, ddpm_fast; m = ddpm_fast.accelerate(ddpm_fast.Unet(dim=8, channels=1, dim_mults=(1, 2))); "
        "w = next(p for p in m.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1); "
        "print(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())")


def test_accelerate_keeps_plain_convolutions_where_prepacked_ones_are_slower():
    assert_only_above_torchs_baseline(
        "import ddpm_fast; from ddpm_fast.model import PrepackedConv2d; "
        "m = ddpm_fast.accelerate(ddpm_fast.Unet(dim=8, channels=1, dim_mults=(1, 2))); "
        "print(any(isinstance(c, PrepackedConv2d) for c in m.modules()))")


def test_cpu_report_names_the_processor_the_levels_and_the_choices():
    report = ddpm_fast.cpu_report()
    assert report["ddpm_fast_isa"] == ops.cpu_isa() and report["supported_isas"] == list(ops.supported_cpu_isas())
    assert report["torch_isa"] and report["processor"] and report["intra_op_parallel"]
    assert set(report["ops"]) >= {"q_sample", "sampler_update", "group_norm_act", "linear_attention"}
    text = ddpm_fast.format_cpu_report(report)
    assert report["processor"] in text and f"ddpm_fast CPU kernels: {ops.cpu_isa()}" in text
