"""Checks shared by the test suites of the compiled ops (on a GPU and under the CUDA emulation)."""

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def oracle_error(fn, oracle, args, dtype):
    """max |fn(args cast to dtype) - oracle(args in float64)|; non-float arguments pass as they are."""
    cast = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    wide = [a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    return (fn(*cast).double() - oracle(*wide).double()).abs().max().item()


def assert_half_precision_rule(fused, reference, args, slack=1e-6):
    """flash-attention's rule for fp16 and bf16: the fused op's error against the float64 oracle
    (``reference`` run in float64) is at most twice the reference's own error in that dtype, plus
    ``slack`` for results the reference gets exactly right."""
    for dtype in HALF_DTYPES:
        ours = oracle_error(fused, reference, args, dtype)
        theirs = oracle_error(reference, reference, args, dtype)
        assert ours <= 2 * theirs + slack, f"{dtype}: error {ours:.3g} against the float64 oracle, reference's {theirs:.3g}"
