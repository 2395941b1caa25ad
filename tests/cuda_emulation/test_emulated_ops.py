"""The CUDA kernels and their binding, run by the emulation on CPU tensors, against the
pure-PyTorch reference: what tests/test_cuda.py checks on a GPU, wherever the CPU can.

Each op runs through torch.ops.ddpm_fast_emulated, whose kernels are csrc/cuda/*.cu and whose
params structs are filled by csrc/cuda/bindings.cpp. Every tensor is guarded and poisoned (see
conftest.py), so an out-of-bounds write fails the test and an unwritten output shows as NaN.
"""

import pytest
import torch

import emulation
from half_precision import assert_half_precision_rule

from ddpm_fast import GaussianDiffusion
from ddpm_fast.ops import reference

DIFFUSION = GaussianDiffusion(200, fused=False)
Q_TABLES = ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")


@pytest.fixture
def E(emulated):
    return emulated


def run_under_every_schedule(fn, exact=True, device=emulation.H100):
    """fn() under each schedule of threads and blocks; the results must agree (exactly, or up to
    the rounding a different order of float atomics gives). Returns the forward schedule's."""
    results = []
    for index, name in enumerate(emulation.SCHEDULES):
        with emulation.schedule(name, seed=index, device=device):
            results.append(fn())
    for other in results[1:]:
        for a, b in zip(_flat(results[0]), _flat(other)):
            if exact:
                assert torch.equal(a, b), "the result depends on the order of threads or blocks"
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return results[0]


def _flat(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def launched(name_part):
    """The (grid, block) of each launch since the last call whose kernel name contains name_part."""
    return [(grid, block) for name, grid, block in emulation.take_launches() if name_part in name]


# ---------------------------------------------------------------- the per-sample layout rule


def in_layout(t, layout):
    """The 4-D tensor t (values unchanged) in `layout`: "nchw", "channels_last", "strided" (a view
    with a gap after every row) or "batch_not_outermost" (dense, but sample b is no contiguous
    slab: the kernels must not mix samples)."""
    if layout == "nchw":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.cat([t, t], dim=-1)[..., :t.shape[-1]]
    assert layout == "batch_not_outermost"
    return t.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)


# (layout of x, layout of the other tensor inputs, memory format of the outputs): channels_last
# only when x is channels_last and every other input has x's strides, else contiguous.
LAYOUT_CASES = [
    ("nchw", "nchw", torch.contiguous_format),
    ("channels_last", "channels_last", torch.channels_last),
    ("strided", "strided", torch.contiguous_format),
    ("batch_not_outermost", "batch_not_outermost", torch.contiguous_format),
    ("channels_last", "nchw", torch.contiguous_format),
    ("nchw", "channels_last", torch.contiguous_format),
]
LAYOUT_IDS = [f"x_{x}-others_{o}" for x, o, _ in LAYOUT_CASES]


def assert_format(t, memory_format):
    assert t.is_contiguous(memory_format=memory_format), f"expected {memory_format}, got strides {t.stride()}"


# ---------------------------------------------------------------- q_sample


def q_args(x, t):
    tables = [getattr(DIFFUSION, n).to(x.dtype if x.dtype == torch.float64 else torch.float32) for n in Q_TABLES]
    return [x, t, *tables, torch.randn_like(x)]


@pytest.mark.parametrize("batch", [0, 1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_q_sample_matches_the_reference(E, batch, dtype):
    args = q_args(torch.randn(batch, 3, 7, 7, dtype=dtype), torch.randint(0, 200, (batch,)))
    got = run_under_every_schedule(lambda: E.q_sample(*args))
    torch.testing.assert_close(got, reference.q_sample(*args))


def test_q_sample_in_half_precision(E):
    args = q_args(torch.randn(6, 1, 12, 12), torch.randint(0, 200, (6,)))
    assert_half_precision_rule(E.q_sample, reference.q_sample, args)


@pytest.mark.parametrize("x_layout, other_layout, memory_format", LAYOUT_CASES, ids=LAYOUT_IDS)
def test_q_sample_on_every_layout(E, x_layout, other_layout, memory_format):
    x, t, a, b, noise = q_args(torch.randn(4, 3, 5, 6), torch.tensor([0, 50, 120, 199]))
    args = [in_layout(x, x_layout), t, a, b, in_layout(noise, other_layout)]
    out = E.q_sample(*args)
    assert_format(out, memory_format)
    torch.testing.assert_close(out, reference.q_sample(*args))


def test_q_sample_of_more_than_65535_samples(E):
    args = q_args(torch.randn(65600, 1, 1, 2), torch.randint(0, 200, (65600,)))
    emulation.take_launches()
    torch.testing.assert_close(E.q_sample(*args), reference.q_sample(*args))
    assert launched("q_sample_kernel") == [((1, 65535, 2), (256, 1, 1))]


def test_float64_q_sample_uses_float64_tables_unrounded(E):
    # Tables with float64 precision (not float32 values widened): a kernel that rounds them to
    # float32 is off by about 1e-8 relative.
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    tables = [torch.rand(200, dtype=torch.float64) + 0.5 for _ in range(2)]
    args = [x, torch.tensor([0, 7, 100, 199]), *tables, torch.randn_like(x)]
    torch.testing.assert_close(E.q_sample(*args), reference.q_sample(*args), rtol=1e-14, atol=1e-14)


def test_out_of_range_timesteps_give_nan_samples_not_a_crash(E):
    out = E.q_sample(*q_args(torch.randn(3, 2, 4, 4), torch.tensor([5, 200, -1])))
    assert out[1:].isnan().all() and not out[0].isnan().any()


# ---------------------------------------------------------------- group_norm_act


def gn_args(n, c, h, w, g, dtype=torch.float32, channels_last=False, affine=True, time=True):
    x = torch.randn(n, c, h, w, dtype=dtype) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.rand(c, dtype=dtype) + 0.5 if affine else None
    bias = torch.randn(c, dtype=dtype) if affine else None
    scale = torch.randn(n, c, dtype=dtype) if time else None
    shift = torch.randn(n, c, dtype=dtype) if time else None
    return [x, g, weight, bias, scale, shift, 1e-5]


def leaves(args):
    return [a.detach().clone().requires_grad_() if torch.is_tensor(a) else a for a in args]


def gn_forward_backward(op, args, act, grad):
    inputs = leaves(args)
    y = op(*inputs, act)
    y = y[0] if isinstance(y, tuple) else y
    y.backward(grad)
    return [y.detach()] + [a.grad for a in inputs if torch.is_tensor(a)]


GN_SHAPES = [(2, 16, 6, 6, 4), (1, 28, 7, 7, 1), (2, 6, 5, 3, 3), (3, 8, 1, 1, 4), (0, 8, 4, 4, 2)]


@pytest.mark.parametrize("act", ["none", "silu", "gelu"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", GN_SHAPES)
def test_group_norm_act_forward_and_backward(E, act, channels_last, shape):
    args = gn_args(*shape, channels_last=channels_last)
    grad = torch.randn(shape[:4])
    ours = gn_forward_backward(E.group_norm_act, args, act, grad)
    ref = gn_forward_backward(reference.group_norm_act, args, act, grad)
    for got, expected in zip(ours, ref):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_act_is_schedule_independent(E, channels_last):
    args = gn_args(2, 12, 5, 7, 3, channels_last=channels_last)
    grad = torch.randn(2, 12, 5, 7)
    forward = run_under_every_schedule(lambda: E.group_norm_act(*args, "gelu"))
    torch.testing.assert_close(forward[0], reference.group_norm_act(*args, "gelu"))
    run_under_every_schedule(lambda: gn_forward_backward(E.group_norm_act, args, "gelu", grad), exact=False)


def test_group_norm_act_without_parameters(E):
    args = gn_args(2, 8, 4, 4, 2, affine=False, time=False)
    grad = torch.randn(2, 8, 4, 4)
    for got, expected in zip(gn_forward_backward(E.group_norm_act, args, "silu", grad),
                             gn_forward_backward(reference.group_norm_act, args, "silu", grad)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_group_norm_act_in_half_precision(E, act):
    assert_half_precision_rule(lambda *a: E.group_norm_act(*a, act)[0],
                               lambda *a: reference.group_norm_act(*a, act), gn_args(2, 32, 8, 8, 8))


def test_group_norm_act_float64(E):
    args = gn_args(2, 6, 5, 3, 3, dtype=torch.float64)
    grad = torch.randn(2, 6, 5, 3, dtype=torch.float64)
    for got, expected in zip(gn_forward_backward(E.group_norm_act, args, "gelu", grad),
                             gn_forward_backward(reference.group_norm_act, args, "gelu", grad)):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_group_norm_act_batch_1_splits_one_large_group(E):
    args = gn_args(1, 64, 32, 32, 1)
    emulation.take_launches()
    got = E.group_norm_act(*args, "silu")[0]
    (grid, _), = launched("partial_stats_kernel")
    assert grid[0] > 1, "batch 1 with one group should be reduced by many blocks"
    torch.testing.assert_close(got, reference.group_norm_act(*args, "silu"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_act_more_rows_than_grid_y_allows(E, channels_last):
    # On the small device grid.y stops at 3: 15 (sample, group) rows forward, 60 (sample,
    # channel) rows or 5 samples backward continue in grid.z, as past 65535 rows on a GPU.
    args = gn_args(5, 12, 3, 3, 3, channels_last=channels_last)
    grad = torch.randn(5, 12, 3, 3)
    emulation.take_launches()
    ours = run_under_every_schedule(lambda: gn_forward_backward(E.group_norm_act, args, "silu", grad),
                                    exact=False, device=emulation.SMALL)
    assert {grid[1] for _, grid, _ in emulation.take_launches() if grid[2] > 1} == {3}
    for got, expected in zip(ours, gn_forward_backward(reference.group_norm_act, args, "silu", grad)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- linear_attention


def attention_forward_backward(op, qkv, heads, scale, grad):
    leaf = qkv.detach().clone().requires_grad_()
    y = op(leaf, heads, scale)
    y.backward(grad)
    return y.detach(), leaf.grad


@pytest.mark.parametrize("b, heads, d, h, w", [(2, 2, 8, 5, 3), (1, 4, 16, 7, 7), (2, 1, 32, 6, 6),
                                               (1, 2, 64, 4, 4)])
def test_linear_attention_forward_and_backward(E, b, heads, d, h, w):
    qkv = torch.randn(b, 3 * heads * d, h, w)
    grad = torch.randn(b, heads * d, h, w)
    ours = attention_forward_backward(E.linear_attention, qkv, heads, d ** -0.5, grad)
    ref = attention_forward_backward(reference.linear_attention, qkv, heads, d ** -0.5, grad)
    for got, expected in zip(ours, ref):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("b, heads, d, h, w", [(0, 2, 8, 4, 4), (2, 2, 0, 4, 4), (2, 1, 8, 0, 3)])
def test_linear_attention_empty_inputs(E, b, heads, d, h, w):
    qkv = torch.randn(b, 3 * heads * d, h, w)
    grad = torch.randn(b, heads * d, h, w)
    y, grad_qkv = attention_forward_backward(E.linear_attention, qkv, heads, 1.0, grad)
    assert y.shape == (b, heads * d, h, w) and grad_qkv.shape == qkv.shape


def test_linear_attention_more_heads_than_grid_y_allows(E):
    # 8 (sample, head) rows on the small device, whose grid.y stops at 3.
    qkv = torch.randn(4, 3 * 2 * 8, 3, 5)
    grad = torch.randn(4, 2 * 8, 3, 5)
    emulation.take_launches()
    ours = run_under_every_schedule(lambda: attention_forward_backward(E.linear_attention, qkv, 2, 0.5, grad),
                                    exact=False, device=emulation.SMALL)
    assert {grid[1] for _, grid, _ in emulation.take_launches() if grid[2] > 1} == {3}
    for got, expected in zip(ours, attention_forward_backward(reference.linear_attention, qkv, 2, 0.5, grad)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_linear_attention_is_schedule_independent(E):
    qkv = torch.randn(2, 3 * 2 * 16, 9, 7)
    grad = torch.randn(2, 2 * 16, 9, 7)
    run_under_every_schedule(lambda: attention_forward_backward(E.linear_attention, qkv, 2, 0.25, grad), exact=False)


def test_linear_attention_float64(E):
    qkv = torch.randn(2, 3 * 2 * 8, 5, 4, dtype=torch.float64)
    grad = torch.randn(2, 2 * 8, 5, 4, dtype=torch.float64)
    for got, expected in zip(attention_forward_backward(E.linear_attention, qkv, 2, 8 ** -0.5, grad),
                             attention_forward_backward(reference.linear_attention, qkv, 2, 8 ** -0.5, grad)):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_linear_attention_in_half_precision(E):
    qkv = torch.randn(2, 3 * 4 * 32, 9, 9)
    assert_half_precision_rule(lambda q: E.linear_attention(q, 4, 32 ** -0.5),
                               lambda q: reference.linear_attention(q, 4, 32 ** -0.5), (qkv,))


# ---------------------------------------------------------------- sampler_update


def sampler_args(batch, shape, dtype=torch.float32, optional=True, steps=9):
    x = torch.randn(batch, *shape, dtype=dtype)
    prev, noise = (torch.randn_like(x) if optional else None for _ in range(2))
    coefs = torch.randn(steps, 7, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return [x, torch.randn_like(x), prev, noise, torch.randint(0, steps, (batch,)), coefs]


# (clip_sample_range, dynamic_thresholding_ratio, sample_max_value): none, clipping, and
# thresholding between the order statistics, at the largest one, and clamped to the maximum.
X0_CLAMPS = [(0.0, 0.0, 1.0), (1.0, 0.0, 1.0), (0.0, 0.9, 3.0), (0.0, 1.0, 100.0), (0.0, 0.5, 1.2)]
X0_CLAMP_IDS = ["none", "clip", "threshold", "threshold-top", "threshold-max"]


@pytest.mark.parametrize("device", [emulation.H100, emulation.SMALL])
@pytest.mark.parametrize("optional", [True, False])
@pytest.mark.parametrize("batch, shape", [(5, (3, 7, 7)), (1, (1, 2, 3)), (0, (3, 4, 4)), (7, (2, 33, 35))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clamp", X0_CLAMPS, ids=X0_CLAMP_IDS)
def test_sampler_update_matches_the_reference(E, device, optional, batch, shape, dtype, clamp):
    # On the small device the 5- and 7-sample batches run past its grid.y limit. Thresholding's
    # radix select runs its block's threads in every schedule, so a missing barrier would show.
    args = sampler_args(batch, shape, dtype, optional)
    got = run_under_every_schedule(lambda: E.sampler_update(*args, *clamp), device=device)
    for ours, expected in zip(got, reference.sampler_update(*args, *clamp)):
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_thresholding_with_ties_and_nan(E, dtype):
    # Repeated magnitudes (the radix select's equal keys) and a sample with a NaN, which ranks as
    # +inf on both backends: its NaN element stays NaN, the others are thresholded.
    x0 = torch.tensor([[3.0, -3.0, 3.0, 0.5, -2.0, 2.0, 2.0, 0.0], [1.5, float("nan"), -4.0, 0.25, 2.0, -2.0, 1.0, 3.0]],
                      dtype=dtype).reshape(2, 2, 2, 2)
    coefs = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]], dtype=dtype)
    args = (torch.zeros_like(x0), x0, None, None, torch.zeros(2, dtype=torch.long), coefs, 0.0, 0.6, 10.0)
    ours, cpu = E.sampler_update(*args), torch.ops.ddpm_fast.sampler_update(*args)
    for got, expected in zip(ours, cpu):
        torch.testing.assert_close(got, expected, equal_nan=True)
    torch.testing.assert_close(ours[1][0], reference.sampler_update(*args)[1][0])
    assert ours[1][1].isnan().sum() == 1


def test_sampler_update_in_half_precision(E):
    args = sampler_args(6, (2, 9, 9))
    for output in (0, 1):
        assert_half_precision_rule(lambda *a: E.sampler_update(*a)[output],
                                   lambda *a: reference.sampler_update(*a)[output], args)


@pytest.mark.parametrize("optional", [True, False])
@pytest.mark.parametrize("x_layout, other_layout, memory_format", LAYOUT_CASES, ids=LAYOUT_IDS)
def test_sampler_update_on_every_layout(E, x_layout, other_layout, memory_format, optional):
    x, eps, prev, noise, step, coefs = sampler_args(4, (3, 5, 6), optional=optional, steps=3)
    args = (in_layout(x, x_layout), in_layout(eps, other_layout),
            *(in_layout(t, other_layout) if t is not None else None for t in (prev, noise)), step, coefs)
    got = E.sampler_update(*args)
    for ours, expected in zip(got, reference.sampler_update(*args)):
        assert_format(ours, memory_format)
        torch.testing.assert_close(ours, expected)


def test_sampler_update_float64_coefficients_and_bad_steps(E):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)  # coefficients float32 cannot hold
    args = (x, torch.randn_like(x), torch.randn_like(x), torch.randn_like(x), torch.tensor([1, 0]),
            1 + torch.rand(2, 7, dtype=torch.float64) * 1e-9)
    for ours, expected in zip(E.sampler_update(*args), reference.sampler_update(*args)):
        torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-14)
    x = torch.randn(2, 1, 4, 4)  # a step outside the table: NaN samples, no crash, no host sync
    for clamp in X0_CLAMPS:
        out, x0 = E.sampler_update(x, torch.randn_like(x), None, None, torch.tensor([0, 5]), torch.randn(3, 7), *clamp)
        assert torch.isfinite(out[0]).all() and out[1].isnan().all() and x0[1].isnan().all()


# ---------------------------------------------------------------- the ops as torch sees them


@pytest.mark.parametrize("x_layout, other_layout, memory_format", LAYOUT_CASES, ids=LAYOUT_IDS)
def test_opcheck_per_sample_ops_on_every_layout(E, x_layout, other_layout, memory_format):
    # opcheck compares the fake kernel (ddpm_fast/ops/layout.py's per_sample_format) with the real
    # one, strides included, so the Python twin of the layout rule must agree with checks.h's.
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    t = torch.tensor([0, 199])
    x_start, t, a, b, noise = q_args(x, t)
    torch.library.opcheck(E.q_sample, (in_layout(x_start, x_layout), t, a, b, in_layout(noise, other_layout)))
    eps, prev = torch.randn_like(x), torch.randn_like(x)
    for prev_x0 in (None, in_layout(prev, other_layout)):
        torch.library.opcheck(E.sampler_update, (in_layout(x, x_layout), in_layout(eps, other_layout), prev_x0,
                                                 in_layout(noise, other_layout), t.clamp(max=2),
                                                 torch.randn(3, 7, dtype=torch.float64)))
        torch.library.opcheck(E.sampler_update, (in_layout(x, x_layout), in_layout(eps, other_layout), prev_x0,
                                                 None, t.clamp(max=2), torch.randn(3, 7, dtype=torch.float64),
                                                 0.0, 0.9, 2.0))


def test_opcheck_group_norm_act_and_linear_attention(E):
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    w = torch.rand(8, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(E.group_norm_act, (x.clone().requires_grad_(), 4, w, None, scale, None, 1e-5, "silu"))
    qkv = torch.randn(2, 3 * 2 * 8, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(E.linear_attention, (qkv, 2, 0.5))


def test_gradcheck_float64(E):
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    sh = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    for act in ("none", "silu", "gelu"):
        assert torch.autograd.gradcheck(lambda *a: E.group_norm_act(a[0], 3, *a[1:], 1e-5, act)[0], (x, w, b, s, sh),
                                        fast_mode=True)
    qkv = torch.randn(1, 3 * 2 * 8, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: E.linear_attention(q, 2, 8 ** -0.5), (qkv,), fast_mode=True)
