"""The benchmark suite's fused and reference workloads compute the same thing (CPU sizes)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from workloads import BUILDERS  # noqa: E402

from ddpm_fast import ops  # noqa: E402


@pytest.mark.skipif(not ops.compiled_ops_loaded(), reason="compiled extension not built")
@pytest.mark.parametrize("group", list(BUILDERS))
def test_workload_fused_matches_reference(group):
    import torch

    BUILDERS[group](torch.device("cpu")).check()


def test_report_turns_rows_into_a_ratio_table():
    import report

    rows = [dict(group="g", impl=impl, device="d", median=m, extra={})
            for impl, m in (("reference", 2.0), ("compile-default", 1.0), ("fused", 0.5))]
    table = report.markdown(rows)
    assert "| g | fused | 500.00 ms | 4.00x | 2.00x |  |" in table
    assert "| g | reference | 2000.00 ms | 1.00x | 0.50x |  |" in table
