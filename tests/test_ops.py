"""Every compiled op against its reference: forward, backward, opcheck, gradcheck, compile,
awkward shapes and layouts, and clear errors for bad input."""

import pytest
import torch

from ddpm_fast import GaussianDiffusion, ops
from ddpm_fast.ops import policy, reference

pytestmark = pytest.mark.skipif(not ops.compiled_ops_loaded(), reason="compiled extension not built")


@pytest.fixture(autouse=True, params=ops.supported_cpu_isas() or ["none"])
def cpu_isa(request):
    """Every test runs with the CPU kernels at each instruction-set level this processor has."""
    if request.param == "none":
        yield request.param
        return
    with ops.using_cpu_isa(request.param):
        yield request.param


SILU_RULE = policy.cpu_silu_is_slower


@pytest.fixture(autouse=True)
def kernels_wherever_they_run(monkeypatch):
    """ops.* take the reference where a kernel is measured slower (small images for attention,
    SiLU at the baseline level); the kernels must be right there too, so here they always run."""
    monkeypatch.setattr(policy, "CPU_ATTENTION_BACKWARD_MIN_PIXELS", 0)
    monkeypatch.setattr(policy, "CPU_PROJECTED_ATTENTION_MIN_PIXELS", 0)
    monkeypatch.setattr(policy, "cpu_silu_is_slower", lambda x, act: False)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in ops.compiled_backends() else [])
SCHEDULE = GaussianDiffusion(200, fused=False)


def tables(device, *names):
    return [getattr(SCHEDULE, n).to(device) for n in names]


def layouts(x):
    """x as NCHW, channels_last, a non-contiguous view, and a dense tensor whose batch dimension
    is not the outermost one (sample b is not one slab), all with the same values."""
    wide = torch.cat([x, x], dim=-1)[..., : x.shape[-1]]
    batch_inside = x.transpose(0, 1).contiguous().transpose(0, 1)
    return {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last), "strided": wide,
            "batch_not_outermost": batch_inside}


def test_kernels_are_built_to_run_in_parallel():
    """The kernels' loops are torch::stable::parallel_for: torch's own intra-op thread pool, behind
    the C shim (tests/test_stable_abi.py checks the library imports it). An inline `omp
    parallel` compiled into the extension, as at::parallel_for was, ran on one thread unless
    built with -fopenmp."""
    from ddpm_fast import _C

    assert _C.intra_op_parallel, "ddpm_fast._C's kernels do not run on torch's intra-op thread pool"


# ---------------------------------------------------------------- q_sample

Q_TABLES = ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")


def q_args(batch, device="cpu", dtype=torch.float32, size=7):
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    t = torch.randint(0, 200, (batch,), device=device)
    return [x, t, *tables(device, *Q_TABLES), torch.randn_like(x)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [0, 1, 5])
def test_q_sample_matches_reference(device, batch):
    args = q_args(batch, device)
    torch.testing.assert_close(torch.ops.ddpm_fast.q_sample(*args), reference.q_sample(*args))


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "batch_not_outermost"])
def test_q_sample_in_every_layout(layout):
    args = q_args(3)
    args[0], args[4] = layouts(args[0])[layout], layouts(args[4])[layout]
    torch.testing.assert_close(ops.q_sample(*args), reference.q_sample(*args))
    args[4] = q_args(3)[4]  # noise in NCHW, x_start in the layout
    torch.testing.assert_close(ops.q_sample(*args), reference.q_sample(*args))


def test_q_sample_keeps_samples_apart_when_the_batch_is_not_outermost():
    # Dense with equal strides, so the kernels once took it as is, and sample b is not one slab.
    x = torch.randn(3, 2, 4).transpose(0, 1)
    noise = torch.randn(3, 2, 4).transpose(0, 1)
    t = torch.tensor([3, 190])
    q_tables = tables("cpu", *Q_TABLES)
    torch.testing.assert_close(torch.ops.ddpm_fast.q_sample(x, t, *q_tables, noise),
                               reference.q_sample(x, t, *q_tables, noise))


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "batch_not_outermost"])
def test_q_sample_opcheck_and_gradcheck(layout):
    # opcheck compares the fake kernel's output strides with the real kernel's in each layout.
    op, args = torch.ops.ddpm_fast.q_sample, q_args(3, dtype=torch.float64)
    args[0], args[4] = layouts(args[0])[layout], layouts(args[4])[layout]
    torch.library.opcheck(op, args)
    grads = [a.requires_grad_() if a.is_floating_point() and a.dim() == 4 else a for a in args]
    assert torch.autograd.gradcheck(lambda *a: op(*a), grads)


def test_q_sample_bad_input():
    args = q_args(2)
    with pytest.raises(RuntimeError, match=r"q_sample: t\[1\]=200 lies outside \[0, 200\)"):
        torch.ops.ddpm_fast.q_sample(args[0], torch.tensor([0, 200]), *args[2:])
    with pytest.raises(RuntimeError, match=r"q_sample: t must be int64"):
        torch.ops.ddpm_fast.q_sample(args[0], torch.tensor([0, 1], dtype=torch.int32), *args[2:])
    with pytest.raises(RuntimeError, match=r"q_sample: noise must have the shape of x_start"):
        torch.ops.ddpm_fast.q_sample(*args[:4], torch.randn(2, 3, 8, 8))


# ---------------------------------------------------------------- group_norm_act

GN_CASES = [  # (N, C, H, W, G)
    (2, 16, 7, 7, 4),
    (1, 28, 7, 7, 1),
    (3, 8, 5, 3, 8),
    (0, 8, 4, 4, 2),
]


def gn_inputs(n, c, h, w, dtype=torch.float32, device="cpu", affine=True, scale_shift=True):
    x = torch.randn(n, c, h, w, dtype=dtype, device=device) * 3 + 1
    weight = torch.randn(c, dtype=dtype, device=device) if affine else None
    bias = torch.randn(c, dtype=dtype, device=device) if affine else None
    scale = torch.randn(n, c, dtype=dtype, device=device) if scale_shift else None
    shift = torch.randn(n, c, dtype=dtype, device=device) if scale_shift else None
    return x, weight, bias, scale, shift


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ["none", "silu", "gelu"])
@pytest.mark.parametrize("case", GN_CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_group_norm_act_forward_and_backward(device, act, case, layout):
    n, c, h, w, g = case
    x, weight, bias, scale, shift = gn_inputs(n, c, h, w, device=device)
    x = layouts(x)[layout]
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias, scale, shift)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, weight, bias, scale, shift)]
    y = ops.group_norm_act(leaves[0], g, *leaves[1:], 1e-5, act)
    y_ref = reference.group_norm_act(ref_leaves[0], g, *ref_leaves[1:], 1e-5, act)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
    if layout == "channels_last" and n > 0:
        assert y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    for ours, ref in zip(leaves, ref_leaves):
        torch.testing.assert_close(ours.grad, ref.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("affine,scale_shift", [(True, True), (False, False), (True, False)])
def test_group_norm_act_without_optional_inputs(affine, scale_shift):
    x, weight, bias, scale, shift = gn_inputs(2, 8, 5, 5, affine=affine, scale_shift=scale_shift)
    torch.testing.assert_close(ops.group_norm_act(x, 2, weight, bias, scale, shift, 1e-5, "silu"),
                               reference.group_norm_act(x, 2, weight, bias, scale, shift, 1e-5, "silu"))


@pytest.mark.parametrize("act", ["none", "silu", "gelu"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_act_gradcheck_and_opcheck(act, channels_last):
    x, weight, bias, scale, shift = gn_inputs(2, 6, 3, 4, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    leaves = [t.requires_grad_() for t in (x, weight, bias, scale, shift)]
    assert torch.autograd.gradcheck(
        lambda x, w, b, s, sh: ops.group_norm_act(x, 3, w, b, s, sh, 1e-5, act), leaves)
    torch.library.opcheck(torch.ops.ddpm_fast.group_norm_act, (x, 3, weight, bias, scale, shift, 1e-5, act))
    y, mean, rstd = torch.ops.ddpm_fast.group_norm_act(x, 3, weight, bias, scale, shift, 1e-5, act)
    torch.library.opcheck(torch.ops.ddpm_fast.group_norm_act_backward,
                          (torch.randn_like(y).detach(), x.detach(), mean.detach(), rstd.detach(), 3, weight.detach(), bias.detach(),
                           scale.detach(), shift.detach(), act))


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_act_statistics_in_float32_are_accurate(channels_last):
    # A large offset is where one-pass (sum of squares) statistics lose everything in fp32;
    # channels with different offsets in one group test how per-channel sums are combined.
    offsets = torch.tensor([1000.0, -500.0, 1000.0, 3.0], dtype=torch.float64).view(1, 4, 1, 1)
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64) + offsets
    x32 = x.float().contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    y = ops.group_norm_act(x32, 2, None, None, None, None, 1e-5, "none")
    torch.testing.assert_close(y.double(), reference.group_norm_act(x, 2, None, None, None, None, 1e-5, "none"),
                               atol=1e-3, rtol=0)


@pytest.mark.parametrize("act", ["none", "silu", "gelu"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_group_norm_act_bf16_kernel_is_as_accurate_as_the_reference(act, layout):
    """The CPU kernel takes bf16 (float32 statistics and arithmetic): flash-attention's rule
    against the float64 oracle, forward and every gradient, and float32 statistics."""
    from half_precision import oracle_error

    x, weight, bias, scale, shift = gn_inputs(3, 16, 7, 5)
    x = layouts(x)[layout]
    assert ops.loading.covered("group_norm_act", x.bfloat16())
    y, mean, rstd = torch.ops.ddpm_fast.group_norm_act(x.bfloat16(), 4, *(t.bfloat16() for t in (weight, bias, scale, shift)),
                                                       1e-5, act)
    assert y.dtype == torch.bfloat16 and mean.dtype == rstd.dtype == torch.float32
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)

    def forward_and_grads(fn):
        def run(x, weight, bias, scale, shift, grad):
            leaves = [t.detach().requires_grad_() for t in (x, weight, bias, scale, shift)]
            y = fn(leaves[0], 4, *leaves[1:], 1e-5, act)
            y.backward(grad.to(y.dtype))
            return torch.cat([y.flatten().float()] + [t.grad.flatten().float() for t in leaves])
        return run

    args = (x, weight, bias, scale, shift, grad)
    ours = oracle_error(forward_and_grads(ops.group_norm_act), forward_and_grads(reference.group_norm_act), args,
                        torch.bfloat16)
    theirs = oracle_error(forward_and_grads(reference.group_norm_act), forward_and_grads(reference.group_norm_act),
                          args, torch.bfloat16)
    assert ours <= 2 * theirs + 1e-6, f"bf16 error {ours:.3g} against the float64 oracle, reference's {theirs:.3g}"


def test_cpu_group_norm_act_bf16_opcheck():
    x, weight, bias, scale, shift = (t.bfloat16() for t in gn_inputs(2, 6, 3, 4))
    for x_in in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.ddpm_fast.group_norm_act, (x_in, 3, weight, bias, scale, shift, 1e-5, "gelu"))
        y, mean, rstd = torch.ops.ddpm_fast.group_norm_act(x_in, 3, weight, bias, scale, shift, 1e-5, "gelu")
        torch.library.opcheck(torch.ops.ddpm_fast.group_norm_act_backward,
                              (torch.randn_like(y), x_in, mean, rstd, 3, weight, bias, scale, shift, "gelu"))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_group_norm_act_bf16_rounds_as_torch(layout):
    """bf16 in, float32 inside: the output is the float32 kernel's output on the same (widened)
    inputs, rounded by torch's own float -> bf16 conversion, bit for bit; NaN stays NaN (its bit pattern may differ)."""
    x, weight, bias, scale, shift = (t.bfloat16() for t in gn_inputs(2, 8, 6, 5))
    x[1, 4:, 2, 3] = float("nan")  # poisons the second sample's second group
    x = layouts(x)[layout]
    y = ops.group_norm_act(x, 2, weight, bias, scale, shift, 1e-5, "silu")
    y32 = ops.group_norm_act(x.float(), 2, *(t.float() for t in (weight, bias, scale, shift)), 1e-5, "silu")
    finite = ~y32.isnan()
    assert torch.equal(y[finite].view(torch.int16), y32[finite].bfloat16().view(torch.int16))
    assert y[1, 4:].isnan().all() and not y[0].isnan().any() and y.isnan().sum() == (~finite).sum()


def test_group_norm_act_bad_input():
    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(RuntimeError, match=r"group_norm_act: num_groups=4 must divide the 6 channels"):
        torch.ops.ddpm_fast.group_norm_act(x, 4, None, None, None, None, 1e-5, "none")
    with pytest.raises(RuntimeError, match=r"group_norm_act: expected a 4-D NCHW input, got 3-D"):
        torch.ops.ddpm_fast.group_norm_act(x[0], 2, None, None, None, None, 1e-5, "none")
    with pytest.raises(RuntimeError, match=r"act must be 'none', 'silu' or 'gelu', got 'relu'"):
        torch.ops.ddpm_fast.group_norm_act(x, 2, None, None, None, None, 1e-5, "relu")
    with pytest.raises(ValueError, match=r"act must be one of"):
        ops.group_norm_act(x, 2, None, None, None, None, 1e-5, "relu")
    with pytest.raises(RuntimeError, match=r"weight and bias must have shape \(6,\)"):
        torch.ops.ddpm_fast.group_norm_act(x, 2, torch.ones(5), None, None, None, 1e-5, "none")
    with pytest.raises(RuntimeError, match=r"scale and shift must match x's dtype"):
        torch.ops.ddpm_fast.group_norm_act(x, 2, None, None, torch.ones(2, 6, dtype=torch.float64), None, 1e-5, "none")
    with pytest.raises(RuntimeError, match=r"x must be a floating-point tensor"):
        torch.ops.ddpm_fast.group_norm_act(x.long(), 2, None, None, None, None, 1e-5, "none")


# ---------------------------------------------------------------- linear_attention


# Shapes that reach every path of the CPU kernel's blocked GEMM: d and H*W below, at and
# past whole vectors and 4-row blocks, ragged and not (the blog's own 32 heads at 28x28 too).
LINEAR_ATTENTION_SHAPES = [(2, 4, 8, 7, 7), (1, 4, 32, 4, 4), (0, 2, 8, 3, 3), (3, 1, 5, 2, 6),
                           (2, 2, 37, 6, 7), (1, 4, 32, 28, 28)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", LINEAR_ATTENTION_SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_attention_forward_and_backward(device, shape, layout, dtype):
    b, heads, d, h, w = shape
    qkv = layouts(torch.randn(b, 3 * heads * d, h, w, device=device, dtype=dtype) * 2)[layout]
    ours, ref = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    y = ops.linear_attention(ours, heads, d**-0.5)
    y_ref = reference.linear_attention(ref, heads, d**-0.5)
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(ours.grad, ref.grad)


def test_linear_attention_gradcheck_and_opcheck():
    qkv = torch.randn(2, 3 * 2 * 4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: ops.linear_attention(q, 2, 0.5), [qkv])
    torch.library.opcheck(torch.ops.ddpm_fast.linear_attention, (qkv, 2, 0.5))
    torch.library.opcheck(torch.ops.ddpm_fast.linear_attention_backward,
                          (torch.randn(2, 8, 3, 5, dtype=torch.float64), qkv.detach(), 2, 0.5))


def test_linear_attention_bad_input():
    with pytest.raises(RuntimeError, match=r"linear_attention: heads=5 must divide qkv's 24 channels"):
        torch.ops.ddpm_fast.linear_attention(torch.randn(1, 24, 2, 2), 5, 1.0)
    with pytest.raises(RuntimeError, match=r"linear_attention: expected qkv of shape"):
        torch.ops.ddpm_fast.linear_attention(torch.randn(24, 2, 2), 2, 1.0)
    with pytest.raises(RuntimeError, match=r"linear_attention_backward: grad_out must have qkv's dtype"):
        torch.ops.ddpm_fast.linear_attention_backward(torch.randn(1, 8, 2, 2).double(), torch.randn(1, 24, 2, 2),
                                                      2, 1.0)


@pytest.mark.parametrize("act", ["none", "silu", "gelu"])
def test_cpu_group_norm_silu_takes_the_reference_at_the_baseline_level(monkeypatch, cpu_isa, act):
    calls = []
    monkeypatch.setattr(reference, "group_norm_act", lambda *args: calls.append(args[-1]))
    monkeypatch.setattr(policy, "cpu_silu_is_slower", SILU_RULE)
    x, weight, bias, scale, shift = gn_inputs(2, 8, 5, 5)
    ops.group_norm_act(x, 4, weight, bias, scale, shift, 1e-5, act)
    assert calls == (["silu"] if cpu_isa == "default" and act == "silu" else [])
    assert ("reference with act='silu'" in ops.cpu_op_choices()["group_norm_act"]) == (cpu_isa == "default")


def test_cpu_attention_picks_the_faster_path_by_image_size_and_level(monkeypatch):
    monkeypatch.setattr(policy, "CPU_ATTENTION_BACKWARD_MIN_PIXELS", 256)
    monkeypatch.setattr(policy, "CPU_PROJECTED_ATTENTION_MIN_PIXELS", 100)
    monkeypatch.setattr(ops.isa, "level_in_use", "avx2")
    calls = []
    for name in ("linear_attention", "projected_linear_attention"):
        monkeypatch.setattr(reference, name, lambda *args, name=name: calls.append(f"reference.{name}"))
    conv1x1 = ops.conv1x1
    monkeypatch.setattr(ops.pointwise_conv, "conv1x1", lambda *args: calls.append("conv1x1") or conv1x1(*args))

    def path(size, training, projected=True):
        calls.clear()
        x = torch.randn(2, 8, size, size, requires_grad=training)
        w_qkv = torch.randn(24, 8, 1, 1)
        if projected:
            ops.projected_linear_attention(x, w_qkv, 2, 0.5)
        else:
            ops.linear_attention(torch.randn(2, 24, size, size, requires_grad=training), 2, 0.5)
        return calls or ["kernel"]

    assert path(7, training=False) == ["conv1x1"]  # then the fused core
    assert path(10, training=False) == ["kernel"]
    assert path(15, training=True) == ["reference.projected_linear_attention"]
    assert path(15, training=True, projected=False) == ["reference.linear_attention"]
    assert path(16, training=True) == ["kernel"]
    assert path(16, training=True, projected=False) == ["kernel"]
    with torch.no_grad():
        assert path(7, training=True, projected=False) == ["kernel"]
    assert "fewer than 256 pixels" in ops.cpu_op_choices()["projected_linear_attention"]
    monkeypatch.setattr(ops.isa, "level_in_use", "default")  # baseline x86-64: training never takes the kernel
    assert path(16, training=True) == ["reference.projected_linear_attention"]
    assert path(16, training=True, projected=False) == ["reference.linear_attention"]
    assert path(16, training=False) == ["kernel"]
    assert "reference when training (" in ops.cpu_op_choices()["linear_attention"]


# ---------------------------------------------------------------- projected_linear_attention


@pytest.mark.parametrize("shape", LINEAR_ATTENTION_SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projected_linear_attention_forward_and_backward(shape, layout, dtype):
    b, heads, d, h, w = shape
    x = layouts(torch.randn(b, 12, h, w, dtype=dtype))[layout]
    weight = torch.randn(3 * heads * d, 12, 1, 1, dtype=dtype) / 2
    ours = [x.clone().requires_grad_(), weight.clone().requires_grad_()]
    ref = [x.clone().requires_grad_(), weight.clone().requires_grad_()]
    y = ops.projected_linear_attention(*ours, heads, d**-0.5)
    y_ref = reference.projected_linear_attention(*ref, heads, d**-0.5)
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(ours[0].grad, ref[0].grad)
    torch.testing.assert_close(ours[1].grad, ref[1].grad)


def test_projected_linear_attention_gradcheck_and_opcheck():
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3 * 2 * 4, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: ops.projected_linear_attention(x, w, 2, 0.5), [x, weight])
    torch.library.opcheck(torch.ops.ddpm_fast.projected_linear_attention, (x, weight, 2, 0.5))
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.ddpm_fast.projected_linear_attention, (x_cl, weight, 2, 0.5))
    grad = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    for g in (grad, grad.to(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.ddpm_fast.projected_linear_attention_backward,
                              (g, x_cl.detach(), weight.detach(), 2, 0.5))


@pytest.mark.parametrize("x_layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("grad_layout", ["nchw", "channels_last", "strided"])
def test_projected_linear_attention_backward_reads_every_grad_layout(x_layout, grad_layout):
    # The accelerated U-Net hands the kernel a channels_last grad_out (from to_out's GEMM).
    x = layouts(torch.randn(2, 12, 5, 6, dtype=torch.float64))[x_layout]
    weight = torch.randn(3 * 2 * 8, 12, 1, 1, dtype=torch.float64) / 2
    grad = layouts(torch.randn(2, 16, 5, 6, dtype=torch.float64))[grad_layout]
    qkv = torch.nn.functional.conv2d(x, weight).requires_grad_()
    reference.linear_attention(qkv, 2, 0.3).backward(grad)
    got = torch.ops.ddpm_fast.projected_linear_attention_backward(grad, x, weight, 2, 0.3)
    torch.testing.assert_close(got, qkv.grad)


def test_projected_linear_attention_bad_input():
    x = torch.randn(1, 6, 2, 2)
    with pytest.raises(RuntimeError, match=r"heads=5 must divide w_qkv's 24 output channels"):
        torch.ops.ddpm_fast.projected_linear_attention(x, torch.randn(24, 6, 1, 1), 5, 1.0)
    with pytest.raises(RuntimeError, match=r"expected w_qkv of shape \(3\*heads\*dim_head, 6, 1, 1\)"):
        torch.ops.ddpm_fast.projected_linear_attention(x, torch.randn(24, 5, 1, 1), 2, 1.0)
    with pytest.raises(RuntimeError, match=r"expected w_qkv of shape"):
        torch.ops.ddpm_fast.projected_linear_attention(x, torch.randn(24, 6, 3, 3), 2, 1.0)
    with pytest.raises(RuntimeError, match=r"w_qkv must have x's dtype"):
        torch.ops.ddpm_fast.projected_linear_attention(x, torch.randn(24, 6, 1, 1).double(), 2, 1.0)
    with pytest.raises(RuntimeError, match=r"expected x of shape \(B, C, H, W\)"):
        torch.ops.ddpm_fast.projected_linear_attention(x[0], torch.randn(24, 6, 1, 1), 2, 1.0)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \(1, 8, 2, 2\)"):
        torch.ops.ddpm_fast.projected_linear_attention_backward(torch.randn(1, 8, 2, 3), x,
                                                                torch.randn(24, 6, 1, 1), 2, 1.0)


# ---------------------------------------------------------------- attention in bf16 on the CPU


def _attention_bf16_cases():
    """(op, make args) for both attention ops in bf16 on the CPU: qkv for the core; x (NCHW and
    channels_last) and w_qkv for the projected op. Shapes with ragged vectors."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 2 * 8, 5, 7) * 2
    x = torch.randn(2, 12, 6, 5)
    weight = torch.randn(3 * 2 * 8, 12, 1, 1) / 2
    return {
        "linear_attention": (ops.linear_attention, reference.linear_attention, (qkv,)),
        "projected_nchw": (ops.projected_linear_attention, reference.projected_linear_attention, (x, weight)),
        "projected_channels_last": (ops.projected_linear_attention, reference.projected_linear_attention,
                                    (x.contiguous(memory_format=torch.channels_last), weight)),
    }


@pytest.mark.parametrize("case", ["linear_attention", "projected_nchw", "projected_channels_last"])
def test_cpu_attention_bf16_kernels_are_as_accurate_as_the_reference(case):
    """The CPU attention kernels take bf16 (float32 softmaxes and contractions): flash-attention's
    rule against the float64 oracle, for the output and every input's gradient."""
    from half_precision import oracle_error

    fused, ref, tensors = _attention_bf16_cases()[case]
    name = "linear_attention" if case == "linear_attention" else "projected_linear_attention"
    assert ops.loading.covered(name, *(t.bfloat16() for t in tensors))
    with torch.no_grad():
        grad = torch.randn_like(ref(*tensors, 2, 0.3))

    def forward_and_grads(fn):
        def run(*args):
            *inputs, grad = args
            leaves = [t.detach().requires_grad_() for t in inputs]
            y = fn(*leaves, 2, 0.3)
            assert y.dtype == leaves[0].dtype
            y.backward(grad.to(y.dtype))
            return torch.cat([y.flatten().float()] + [t.grad.flatten().float() for t in leaves])
        return run

    args = (*tensors, grad)
    ours = oracle_error(forward_and_grads(fused), forward_and_grads(ref), args, torch.bfloat16)
    theirs = oracle_error(forward_and_grads(ref), forward_and_grads(ref), args, torch.bfloat16)
    assert ours <= 2 * theirs + 1e-6, f"bf16 error {ours:.3g} against the float64 oracle, reference's {theirs:.3g}"


def test_cpu_attention_bf16_kernels_round_as_torch():
    """bf16 in, float32 inside: each kernel's output (and the backward's gradient) is the float32
    kernel's on the same widened inputs, rounded by torch's float -> bf16 conversion, bit for bit."""
    def same_bits(got, want32):
        assert got.dtype == torch.bfloat16
        assert torch.equal(got.view(torch.int16), want32.bfloat16().view(torch.int16))

    qkv = _attention_bf16_cases()["linear_attention"][2][0].bfloat16()
    y = torch.ops.ddpm_fast.linear_attention(qkv, 2, 0.3)
    same_bits(y, torch.ops.ddpm_fast.linear_attention(qkv.float(), 2, 0.3))
    grad = torch.randn_like(y)
    same_bits(torch.ops.ddpm_fast.linear_attention_backward(grad, qkv, 2, 0.3),
              torch.ops.ddpm_fast.linear_attention_backward(grad.float(), qkv.float(), 2, 0.3))
    for case in ("projected_nchw", "projected_channels_last"):
        x, weight = (t.bfloat16() for t in _attention_bf16_cases()[case][2])
        x = x.contiguous(memory_format=torch.channels_last) if case.endswith("last") else x
        y = torch.ops.ddpm_fast.projected_linear_attention(x, weight, 2, 0.3)
        same_bits(y, torch.ops.ddpm_fast.projected_linear_attention(x.float(), weight.float(), 2, 0.3))
        for g in (torch.randn_like(y), torch.randn_like(y).contiguous(memory_format=torch.channels_last)):
            same_bits(torch.ops.ddpm_fast.projected_linear_attention_backward(g, x, weight, 2, 0.3),
                      torch.ops.ddpm_fast.projected_linear_attention_backward(g.float(), x.float(), weight.float(),
                                                                              2, 0.3))


def test_cpu_projected_attention_runs_its_kernel_under_autocast(monkeypatch):
    """Under bf16 autocast the weight stays float32 and x is bf16: the op casts the weight, as
    autocast does for the blog's convolution, so the projected kernel runs instead of a GEMM
    and the core."""
    from ddpm_fast.ops import attention

    cores = []
    monkeypatch.setattr(attention, "linear_attention", lambda *args: cores.append(args))
    x = torch.randn(2, 12, 6, 5).bfloat16()
    weight = torch.randn(3 * 2 * 8, 12, 1, 1)
    y = ops.projected_linear_attention(x, weight, 2, 0.3)
    assert not cores and y.dtype == torch.bfloat16
    assert torch.equal(y, torch.ops.ddpm_fast.projected_linear_attention(x, weight.bfloat16(), 2, 0.3))


def test_cpu_attention_bf16_opcheck():
    qkv = torch.randn(2, 3 * 2 * 4, 3, 5).bfloat16()
    torch.library.opcheck(torch.ops.ddpm_fast.linear_attention, (qkv, 2, 0.5))
    torch.library.opcheck(torch.ops.ddpm_fast.linear_attention_backward,
                          (torch.randn(2, 8, 3, 5).bfloat16(), qkv, 2, 0.5))
    x = torch.randn(2, 6, 3, 5).bfloat16()
    weight = torch.randn(3 * 2 * 4, 6, 1, 1).bfloat16()
    for x_in in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.ddpm_fast.projected_linear_attention, (x_in, weight, 2, 0.5))
        torch.library.opcheck(torch.ops.ddpm_fast.projected_linear_attention_backward,
                              (torch.randn(2, 8, 3, 5).bfloat16(), x_in, weight, 2, 0.5))


# ---------------------------------------------------------------- torch.compile


def test_every_op_compiles_without_graph_breaks():
    x, weight, bias, scale, shift = gn_inputs(2, 8, 5, 5)
    qkv = torch.randn(2, 3 * 2 * 4, 5, 5)
    qa, sa = q_args(2), sampler_args(2)

    w_qkv = torch.randn(3 * 2 * 4, 8, 1, 1)

    def all_ops(x, weight, bias, scale, shift, qkv):
        a = ops.group_norm_act(x, 4, weight, bias, scale, shift, 1e-5, "silu")
        b = ops.linear_attention(qkv, 2, 0.5)
        c = ops.projected_linear_attention(x, w_qkv, 2, 0.5)
        return a, b, c, ops.q_sample(*qa), *ops.sampler_update(*sa)

    compiled = torch.compile(all_ops, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(x, weight, bias, scale, shift, qkv), all_ops(x, weight, bias, scale, shift, qkv)):
        torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- sampler_update


def sampler_args(batch, dtype=torch.float32, device="cpu", prev=True, noise=True, steps=7):
    x = torch.randn(batch, 3, 5, 5, device=device, dtype=dtype)
    optional = [torch.randn_like(x) if present else None for present in (prev, noise)]
    step = torch.randint(0, steps, (batch,), device=device)
    coefs = torch.randn(steps, 7, device=device, dtype=dtype)
    return [x, torch.randn_like(x), *optional, step, coefs]


# (clip_sample_range, dynamic_thresholding_ratio, sample_max_value): none, clipping, and
# thresholding whose scale is clamped from below (1), moves freely, or is clamped from above.
X0_CLAMPS = [(0.0, 0.0, 1.0), (1.0, 0.0, 1.0), (0.0, 0.1, 2.0), (0.0, 0.9, 3.0), (0.0, 1.0, 1.5)]
X0_CLAMP_IDS = ["none", "clip", "threshold-low", "threshold", "threshold-max"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 5])
@pytest.mark.parametrize("prev,noise", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("clamp", X0_CLAMPS, ids=X0_CLAMP_IDS)
def test_sampler_update_matches_reference(device, dtype, batch, prev, noise, clamp):
    args = sampler_args(batch, dtype, device, prev, noise)
    for got, expected in zip(torch.ops.ddpm_fast.sampler_update(*args, *clamp),
                             reference.sampler_update(*args, *clamp)):
        torch.testing.assert_close(got, expected)


def test_thresholding_takes_torch_quantile_of_each_sample():
    # Sample 0's |x0| quantile lies inside [1, max]: x0 / s inside, +-1 beyond; sample 1's is below 1.
    x0 = torch.stack([torch.linspace(-4, 4, 75).reshape(3, 5, 5), torch.linspace(-0.5, 0.5, 75).reshape(3, 5, 5)])
    coefs = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]])  # x0 = model output; x_next = x0
    args = (torch.zeros_like(x0), x0, None, None, torch.zeros(2, dtype=torch.long), coefs, 0.0, 0.8, 10.0)
    out, got = ops.sampler_update(*args)
    s = torch.quantile(x0[0].abs().flatten(), 0.8)
    torch.testing.assert_close(got[0], x0[0].clamp(-s, s) / s)
    torch.testing.assert_close(got[1], x0[1])  # s = 1: nothing changes
    torch.testing.assert_close(out, got)


def test_sampler_update_keeps_float64_coefficients():
    # Coefficients that float32 cannot hold: an fp64 run must not round its table to fp32.
    args = sampler_args(3, torch.float64)
    args[-1] = 1 + torch.rand(7, 7, dtype=torch.float64) * 1e-9
    for got, expected in zip(ops.sampler_update(*args), reference.sampler_update(*args)):
        torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("mixed", [False, True])
def test_sampler_update_in_every_layout(layout, mixed):
    args = sampler_args(3)
    for i in range(4):  # with `mixed`, eps keeps NCHW while the others change layout
        if not (mixed and i == 1):
            args[i] = layouts(args[i])[layout]
    out, x0 = ops.sampler_update(*args)
    for got, expected in zip((out, x0), reference.sampler_update(*args)):
        torch.testing.assert_close(got, expected)
    if layout == "channels_last" and not mixed:
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_sampler_update_reads_a_batch_that_is_not_outermost():
    # Dense tensors whose batch dimension is not outermost: sample b is no flat slab of memory.
    for x in (torch.randn(3, 2, 4).transpose(0, 1), torch.randn(3, 2, 4, 5).transpose(0, 1)):
        eps, prev, noise = (torch.randn(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1) for _ in range(3))
        step, coefs = torch.tensor([1, 0]), torch.randn(2, 7)
        args = (x, eps, prev, noise, step, coefs)
        for got, expected in zip(ops.sampler_update(*args), reference.sampler_update(*args)):
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("prev,noise", [(True, True), (False, False)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "batch_not_outermost"])
@pytest.mark.parametrize("clamp", X0_CLAMPS, ids=X0_CLAMP_IDS)
def test_sampler_update_opcheck_and_gradcheck(prev, noise, layout, clamp):
    # opcheck compares the fake kernel's output strides with the real kernel's in each layout.
    # Thresholding's gradient reaches x and the model output also through the scale s, at the
    # two order statistics of |x0| that its quantile interpolates.
    args = sampler_args(3, torch.float64, prev=prev, noise=noise)
    args[:4] = [layouts(a)[layout] if a is not None else None for a in args[:4]]
    torch.library.opcheck(torch.ops.ddpm_fast.sampler_update, (*args, *clamp))
    leaves = [a.requires_grad_() if a is not None and a.dim() == 4 else a for a in args]
    assert torch.autograd.gradcheck(lambda *a: ops.sampler_update(*a, *clamp), leaves)


def test_sampler_update_bad_input():
    x, eps, prev, noise, step, coefs = sampler_args(2)
    op = torch.ops.ddpm_fast.sampler_update
    with pytest.raises(RuntimeError, match=r"sampler_update: step\[1\]=7 lies outside \[0, 7\)"):
        op(x, eps, prev, noise, torch.tensor([0, 7]), coefs)
    with pytest.raises(RuntimeError, match=r"sampler_update: step must be int64"):
        op(x, eps, prev, noise, step.int(), coefs)
    with pytest.raises(RuntimeError, match=r"sampler_update: step must have shape \(2,\)"):
        op(x, eps, prev, noise, step[:1], coefs)
    with pytest.raises(RuntimeError, match=r"sampler_update: coefs must have shape \(steps, 7\)"):
        op(x, eps, prev, noise, step, coefs[:, :5])
    with pytest.raises(RuntimeError, match=r"sampler_update: coefs must be float32 or Double"):
        op(x.double(), eps.double(), None, None, step, coefs.half())
    with pytest.raises(RuntimeError, match=r"sampler_update: prev_x0 must have the shape of x"):
        op(x, eps, prev[:, :2], noise, step, coefs)
    with pytest.raises(RuntimeError, match=r"sampler_update: noise must have x's dtype"):
        op(x, eps, prev, noise.double(), step, coefs)
    with pytest.raises(RuntimeError, match=r"clip_sample_range must be >= 0"):
        op(x, eps, prev, noise, step, coefs, -1.0)
    with pytest.raises(RuntimeError, match=r"dynamic_thresholding_ratio must lie in \(0, 1\]"):
        op(x, eps, prev, noise, step, coefs, 0.0, 1.5)
    with pytest.raises(RuntimeError, match=r"clip_sample_range and dynamic_thresholding_ratio are exclusive"):
        op(x, eps, prev, noise, step, coefs, 1.0, 0.9)
    with pytest.raises(RuntimeError, match=r"sample_max_value must be > 0 with thresholding"):
        op(x, eps, prev, noise, step, coefs, 0.0, 0.9, 0.0)
