"""The CUDA kernels and their binding, run by the emulation on CPU tensors, against the
pure-PyTorch reference: what tests/test_cuda.py checks on a GPU, wherever the CPU can.

Each op runs through torch.ops.ddpm_fast_emulated, whose kernels are csrc/cuda/*.cu and whose
params structs are filled by csrc/cuda/bindings.cpp. Every tensor is guarded and poisoned (see
conftest.py), so an out-of-bounds write fails the test and an unwritten output shows as NaN.
"""

import pytest
import torch

import emulation
from ddpm_fast import GaussianDiffusion, reference
from ddpm_fast.testing import assert_half_precision_rule

DIFFUSION = GaussianDiffusion(200, fused=False)
Q_TABLES = ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")
P_TABLES = ("sqrt_recip_alphas", "eps_coef", "posterior_std")


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


# ---------------------------------------------------------------- q_sample / p_sample_update


def update_args(op, x, t, noise_like=None):
    tables = [getattr(DIFFUSION, n).to(x.dtype if x.dtype == torch.float64 else torch.float32)
              for n in (Q_TABLES if op == "q_sample" else P_TABLES)]
    n1, n2 = torch.randn_like(x), torch.randn_like(x)
    if op == "q_sample":
        return [x, t, *tables, n1]
    return [x, n1, t, *tables, n2]


def run_update(E, op, args):
    return getattr(E, op)(*args)


def reference_update(op, args):
    return getattr(reference, op)(*args)


@pytest.mark.parametrize("op", ["q_sample", "p_sample_update"])
@pytest.mark.parametrize("batch", [0, 1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_updates_match_the_reference(E, op, batch, dtype):
    x = torch.randn(batch, 3, 7, 7, dtype=dtype)
    args = update_args(op, x, torch.randint(0, 200, (batch,)))
    got = run_under_every_schedule(lambda: run_update(E, op, args))
    torch.testing.assert_close(got, reference_update(op, args))


@pytest.mark.parametrize("op", ["q_sample", "p_sample_update"])
def test_updates_in_half_precision(E, op):
    x = torch.randn(6, 1, 12, 12)
    args = update_args(op, x, torch.randint(0, 200, (6,)))
    assert_half_precision_rule(lambda *a: run_update(E, op, a), lambda *a: reference_update(op, a), args)


@pytest.mark.parametrize("op", ["q_sample", "p_sample_update"])
@pytest.mark.parametrize("layout", ["channels_last", "strided", "batch_not_outermost"])
def test_updates_on_every_layout(E, op, layout):
    base = torch.randn(4, 3, 5, 6)
    x = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": torch.cat([base, base], dim=-1)[..., :6],
        # Dense, but sample b is not one contiguous slab: the kernels must not mix samples.
        "batch_not_outermost": base.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
    }[layout]
    args = update_args(op, x, torch.tensor([0, 50, 120, 199]))
    args = [a.contiguous(memory_format=torch.channels_last) if layout == "channels_last" and torch.is_tensor(a)
            and a.dim() == 4 else a for a in args]
    if layout == "batch_not_outermost":
        args = [a.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3) if torch.is_tensor(a) and a.dim() == 4 else a
                for a in args]
    torch.testing.assert_close(run_update(E, op, args), reference_update(op, args))


def test_updates_of_more_than_65535_samples(E):
    x = torch.randn(65600, 1, 1, 2)  # the cheapest kernel runs the real thing
    args = update_args("p_sample_update", x, torch.randint(0, 200, (65600,)))
    emulation.take_launches()
    torch.testing.assert_close(run_update(E, "p_sample_update", args), reference_update("p_sample_update", args))
    assert launched("per_sample_update_kernel") == [((1, 65535, 2), (256, 1, 1))]


def test_float64_updates_use_float64_tables_unrounded(E):
    # Tables with float64 precision (not float32 values widened): a kernel that rounds them to
    # float32 is off by about 1e-8 relative.
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    t = torch.tensor([0, 7, 100, 199])
    tables = [torch.rand(200, dtype=torch.float64) + 0.5 for _ in range(3)]
    for op, args in (("q_sample", [x, t, *tables[:2], torch.randn_like(x)]),
                     ("p_sample_update", [x, torch.randn_like(x), t, *tables, torch.randn_like(x)])):
        torch.testing.assert_close(run_update(E, op, args), reference_update(op, args), rtol=1e-14, atol=1e-14)


def test_out_of_range_timesteps_give_nan_samples_not_a_crash(E):
    x = torch.randn(3, 2, 4, 4)
    args = update_args("q_sample", x, torch.tensor([5, 200, -1]))
    out = run_update(E, "q_sample", args)
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
    coefs = torch.randn(steps, 6, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return [x, torch.randn_like(x), prev, noise, torch.randint(0, steps, (batch,)), coefs]


@pytest.mark.parametrize("device", [emulation.H100, emulation.SMALL])
@pytest.mark.parametrize("optional", [True, False])
@pytest.mark.parametrize("batch, shape", [(5, (3, 7, 7)), (1, (1, 2, 3)), (0, (3, 4, 4)), (7, (2, 33, 35))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampler_update_matches_the_reference(E, device, optional, batch, shape, dtype):
    # On the small device the 5- and 7-sample batches run past its grid.y limit.
    args = sampler_args(batch, shape, dtype, optional)
    got = run_under_every_schedule(lambda: E.sampler_update(*args), device=device)
    for ours, expected in zip(got, reference.sampler_update(*args)):
        torch.testing.assert_close(ours, expected)


def test_sampler_update_in_half_precision(E):
    args = sampler_args(6, (2, 9, 9))
    for output in (0, 1):
        assert_half_precision_rule(lambda *a: E.sampler_update(*a)[output],
                                   lambda *a: reference.sampler_update(*a)[output], args)


def test_sampler_update_layouts_float64_coefficients_and_bad_steps(E):
    x = torch.randn(4, 3, 5, 6).contiguous(memory_format=torch.channels_last)
    args = (x, torch.randn_like(x), torch.randn_like(x), None, torch.tensor([0, 1, 2, 1]), torch.randn(3, 6))
    out, x0 = E.sampler_update(*args)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for ours, expected in zip((out, x0), reference.sampler_update(*args)):
        torch.testing.assert_close(ours, expected)
    inside = torch.randn(3, 4, 5, 6).transpose(0, 1)  # dense, but the batch is not outermost
    args = (inside, torch.randn(3, 4, 5, 6).transpose(0, 1), None, None, torch.tensor([0, 1, 2, 1]), torch.randn(3, 6))
    for ours, expected in zip(E.sampler_update(*args), reference.sampler_update(*args)):
        torch.testing.assert_close(ours, expected)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)  # coefficients float32 cannot hold
    args = (x, torch.randn_like(x), torch.randn_like(x), torch.randn_like(x), torch.tensor([1, 0]),
            1 + torch.rand(2, 6, dtype=torch.float64) * 1e-9)
    for ours, expected in zip(E.sampler_update(*args), reference.sampler_update(*args)):
        torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-14)
    x = torch.randn(2, 1, 4, 4)  # a step outside the table: NaN samples, no crash, no host sync
    out, x0 = E.sampler_update(x, torch.randn_like(x), None, None, torch.tensor([0, 5]), torch.randn(3, 6))
    assert torch.isfinite(out[0]).all() and out[1].isnan().all() and x0[1].isnan().all()


# ---------------------------------------------------------------- the ops as torch sees them


def test_opcheck_every_op(E):
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    t = torch.tensor([0, 199])
    q_tables = [getattr(DIFFUSION, n).double() for n in Q_TABLES]
    p_tables = [getattr(DIFFUSION, n).double() for n in P_TABLES]
    torch.library.opcheck(E.q_sample, (x, t, *q_tables, torch.randn_like(x)))
    torch.library.opcheck(E.p_sample_update, (x, torch.randn_like(x), t, *p_tables, torch.randn_like(x)))
    w = torch.rand(8, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(E.group_norm_act, (x.clone().requires_grad_(), 4, w, None, scale, None, 1e-5, "silu"))
    qkv = torch.randn(2, 3 * 2 * 8, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(E.linear_attention, (qkv, 2, 0.5))
    torch.library.opcheck(E.sampler_update, (x, torch.randn_like(x), None, torch.randn_like(x), t.clamp(max=2),
                                             torch.randn(3, 6, dtype=torch.float64)))


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
