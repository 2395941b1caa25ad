"""Python face of the compiled ops: loading, fake (meta) kernels, autograd and fallbacks.

The schemas live in ``csrc/op_schemas.h`` (namespace ``ddpm_fast``), each backend registers its
kernels in C++, and this module adds what torch.compile and autograd need. Every public
function here has the signature of its twin in :mod:`ddpm_fast.reference` and runs that
reference when the compiled op does not cover a case (extension missing, another device or
dtype), so callers never need to check.
"""

import contextlib
import importlib.util
import warnings

import torch

from . import reference

# The compiled libraries are built on torch's stable ABI for torch 2.10 and later (setup.py).
MIN_TORCH = (2, 10)


def _load_compiled_ops():
    """Imports ddpm_fast._C (the schemas and CPU kernels); returns why it could not, or None."""
    if torch.__version__ < MIN_TORCH:  # TorchVersion compares as a version, not as a string
        return (f"torch {torch.__version__} is older than 2.10, the oldest torch the compiled ops are "
                "built for (its stable ABI); upgrade torch to use them")
    try:
        from . import _C  # noqa: F401  (importing the library runs its STABLE_TORCH_LIBRARY registrations)
    except (ImportError, OSError) as error:  # a missing or broken build must not break the package
        return f"{type(error).__name__}: {error}"
    return None


_LOAD_ERROR = _load_compiled_ops()
if _LOAD_ERROR is not None:
    warnings.warn(
        f"ddpm_fast: the compiled extension could not be loaded ({_LOAD_ERROR}); "
        "using the pure-PyTorch reference ops. Reinstall with 'pip install .' to build it.",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    from . import _C

    if _C.cpu_isa_problem:
        warnings.warn(f"ddpm_fast: {_C.cpu_isa_problem}", RuntimeWarning, stacklevel=2)


def load_cuda_library(path):
    """Loads the CUDA kernels' library at ``path`` into torch's dispatcher; returns why it could not
    (the loader's message), or None. The CPU ops stay registered either way."""
    try:
        torch.ops.load_library(path)
    except OSError as error:  # e.g. no libcudart, or a torch without the CUDA symbols it needs
        return f"{type(error).__name__}: {error}"
    return None


def _load_cuda_kernels():
    """ddpm_fast._cuda, the CUDA kernels, is a library of its own, loaded only when torch has CUDA,
    so that a CPU-only machine never needs libcudart. Returns why the CUDA kernels are not loaded,
    or None; warns (once, at import) when they should be there and are not."""
    if _LOAD_ERROR is not None or torch.version.cuda is None:
        return _LOAD_ERROR or "torch has no CUDA"
    spec = importlib.util.find_spec("ddpm_fast._cuda")
    if spec is None:
        problem = ("ddpm_fast._cuda was not built: the build skips it when it finds no CUDA toolkit "
                   "matching torch's CUDA, or no libcudart (see 'pip install -v .'; "
                   "DDPM_FAST_REQUIRE_CUDA=1 makes that an error)")
        if not torch.cuda.is_available():
            return problem  # no GPU here: nothing is lost, nothing to warn about
    else:
        problem = load_cuda_library(spec.origin)
        if problem is None:
            return None
    warnings.warn(f"ddpm_fast: the CUDA kernels are not loaded ({problem}); CUDA tensors run the "
                  "pure-PyTorch reference ops, the CPU ops are unaffected.", RuntimeWarning, stacklevel=3)
    return problem


_CUDA_LOAD_ERROR = _load_cuda_kernels()

OP_NAMES = ("q_sample", "p_sample_update", "group_norm_act", "linear_attention", "sampler_update")
# dtypes each backend's kernels are written for; anything else runs the reference.
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def compiled_ops_loaded():
    """True when the compiled extension ``ddpm_fast._C`` is loaded."""
    return _LOAD_ERROR is None


def load_error():
    """Why the compiled extension failed to load, or None."""
    return _LOAD_ERROR


def cuda_load_error():
    """Why the CUDA kernels (ddpm_fast._cuda) are not loaded, or None when they are."""
    return _CUDA_LOAD_ERROR


def cpu_isa():
    """The instruction-set level the CPU kernels run at: 'avx512', 'avx2' or 'default' (baseline
    x86-64), or None without the compiled extension. It starts as the best this processor has,
    or as the environment variable DDPM_FAST_CPU_ISA says."""
    return _C.cpu_isa() if compiled_ops_loaded() else None


def supported_cpu_isas():
    """The levels this processor can run the CPU kernels at, baseline first ('default', ...)."""
    return _C.supported_cpu_isas() if compiled_ops_loaded() else ()


def set_cpu_isa(level):
    """Runs the CPU kernels at ``level`` ('avx512', 'avx2' or 'default') from now on, for every
    thread; returns the previous level. Raises ValueError for a level the processor lacks."""
    if not compiled_ops_loaded():
        raise RuntimeError(f"the compiled extension is not loaded: {_LOAD_ERROR}")
    if level not in ("avx512", "avx2", "default"):
        raise ValueError(f"level must be 'avx512', 'avx2' or 'default', got {level!r}")
    global _cpu_level
    previous = _C.cpu_isa()
    _C.set_cpu_isa(level)
    _cpu_level = level
    return previous


@contextlib.contextmanager
def using_cpu_isa(level):
    """Runs the body with the CPU kernels at ``level``, then restores the previous level."""
    previous = set_cpu_isa(level)
    try:
        yield
    finally:
        set_cpu_isa(previous)


# The level the CPU kernels run at, kept here too so that per-call choices read a Python value
# (which torch.compile guards on) instead of calling into the extension.
_cpu_level = cpu_isa()


def cpu_prefers_channels_last():
    """Whether CPU convolutions run faster channels_last here, for accelerate()'s default.

    Decided by torch's own CPU level, since oneDNN runs the convolutions: at AVX2 and AVX-512
    the seed U-Net's batch-64 forward is faster channels_last (331 against 387 ms, 311 against
    370 ms), at baseline x86-64 slower (905 against 794 ms), on the development machine's AMD
    EPYC with each level forced by scripts/at_cpu_isa.py.
    """
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def cpu_op_choices():
    """What runs on the CPU here, per op: 'fused', or 'reference' and why; and the layout
    accelerate() gives CPU models. Shown by :func:`ddpm_fast.cpu_report`."""
    if not compiled_ops_loaded():
        return {op: f"reference (no compiled extension: {_LOAD_ERROR})" for op in OP_NAMES}
    choices = {op: "fused" for op in OP_NAMES + ("projected_linear_attention",)}
    for op in ("linear_attention", "projected_linear_attention"):
        choices[op] = ("fused; reference when training (its backward is slower at this level)"
                       if _cpu_level == "default" else
                       f"fused; reference when training on images of fewer than "
                       f"{CPU_ATTENTION_BACKWARD_MIN_PIXELS} pixels (its backward is slower there)")
    if _cpu_level == "default":
        choices["group_norm_act"] = "fused; reference with act='silu' (its SiLU is slower at this level)"
    choices["projected_linear_attention"] += (
        f"; a GEMM projection before the fused core below {CPU_PROJECTED_ATTENTION_MIN_PIXELS} pixels")
    choices["accelerate() layout"] = (
        "channels_last" if cpu_prefers_channels_last()
        else "NCHW (oneDNN's channels_last convolutions are slower at torch's baseline level)")
    return choices


def _find_backends():
    if not compiled_ops_loaded():
        return ()
    return tuple(
        device
        for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key("ddpm_fast::q_sample", key)
    )


# Found once at import: the dispatcher query is not something torch.compile can trace.
_BACKENDS = _find_backends()


def compiled_backends():
    """The device types with compiled kernels, e.g. ``('cpu',)`` or ``('cpu', 'cuda')``."""
    return _BACKENDS


def _covered(*tensors):
    """Whether a compiled kernel exists for these tensors' device and dtype."""
    x = tensors[0]
    return (
        x.device.type in _BACKENDS
        and x.dtype in _KERNEL_DTYPES[x.device.type]
        and all(t.device == x.device and t.dtype == x.dtype for t in tensors if t is not None)
    )


# ---------------------------------------------------------------- q_sample / p_sample_update


def q_sample(x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise):
    """Fused ``sqrt_ab[t] * x_start + sqrt_1mab[t] * noise``; see :func:`reference.q_sample`."""
    if _covered(x_start, noise):
        return torch.ops.ddpm_fast.q_sample(
            x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise
        )
    return reference.q_sample(x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise)


def p_sample_update(x, eps, t, sqrt_recip_alphas, eps_coef, posterior_std, noise):
    """Fused reverse update from predicted noise; see :func:`reference.p_sample_update`."""
    if _covered(x, eps, noise):
        return torch.ops.ddpm_fast.p_sample_update(
            x, eps, t, sqrt_recip_alphas, eps_coef, posterior_std, noise
        )
    return reference.p_sample_update(x, eps, t, sqrt_recip_alphas, eps_coef, posterior_std, noise)


# ---------------------------------------------------------------- group_norm_act


def group_norm_act(x, num_groups, weight, bias, scale, shift, eps, act):
    """Fused GroupNorm + scale/shift + activation; see :func:`reference.group_norm_act`.

    x: (N, C, H, W) contiguous or channels_last; weight, bias: (C,) or None; scale, shift:
    (N, C) or None; act: 'none' | 'silu' | 'gelu'. Returns (N, C, H, W) in x's memory format.
    """
    if act not in reference.ACTIVATIONS:
        raise ValueError(f"act must be one of {reference.ACTIVATIONS}, got {act!r}")
    if x.dtype in (torch.float16, torch.bfloat16):
        # Under autocast the parameters stay float32 while activations are 16-bit; the kernel
        # takes one dtype, and its statistics are accumulated in float32 either way.
        weight, bias, scale, shift = (p.to(x.dtype) if p is not None else None
                                      for p in (weight, bias, scale, shift))
    if _covered(x, weight, bias, scale, shift) and x.dim() == 4 and not _cpu_silu_is_slower(x, act):
        return torch.ops.ddpm_fast.group_norm_act(
            x, num_groups, weight, bias, scale, shift, eps, act
        )[0]
    return reference.group_norm_act(x, num_groups, weight, bias, scale, shift, eps, act)


def _cpu_silu_is_slower(x, act):
    # At baseline x86-64 (SSE2: 4 lanes, no FMA) the kernels' SiLU loses to torch's: the fused
    # GroupNorm+SiLU forward ran 0.71-0.81x the reference at 32x64x28x28 (the benchmark's op
    # group), where GELU (1.4x) and no activation (1.8x) win. The seed's ConvNeXt U-Net has no
    # SiLU GroupNorm; ResNet-block U-Nets do.
    return act == "silu" and x.device.type == "cpu" and _cpu_level == "default"


# ---------------------------------------------------------------- linear_attention


def _head_dim_covered(qkv, heads):
    # The CUDA kernels hold a head in registers: dim_head <= 64 (<= 32 in float64).
    if qkv.device.type != "cuda":
        return True
    return qkv.shape[1] // (3 * heads) <= (32 if qkv.dtype == torch.float64 else 64)


def linear_attention(qkv, heads, scale):
    """Fused linear-attention core; see :func:`reference.linear_attention`.

    qkv: (B, 3 * heads * dim_head, H, W) -> (B, heads * dim_head, H, W).
    """
    if _covered(qkv) and qkv.dim() == 4 and _head_dim_covered(qkv, heads):
        if qkv.device.type == "cpu" and _cpu_attention_backward_is_slower(qkv):
            return reference.linear_attention(qkv, heads, scale)
        return torch.ops.ddpm_fast.linear_attention(qkv, heads, scale)
    return reference.linear_attention(qkv, heads, scale)


def projected_linear_attention(x, w_qkv, heads, scale):
    """``linear_attention(conv1x1(x, w_qkv), heads, scale)``, the seed's ``to_qkv`` and core;
    see :func:`reference.projected_linear_attention`.

    On the CPU one kernel projects each (sample, head) in cache, so the qkv tensor (three
    times the output) never reaches memory; elsewhere the projection runs as a GEMM before
    :func:`linear_attention`. x: (B, C, H, W), NCHW or channels_last; w_qkv:
    (3 * heads * dim_head, C, 1, 1) -> (B, heads * dim_head, H, W), NCHW.
    """
    if _covered(x, w_qkv) and x.device.type == "cpu" and x.dim() == 4:
        if _cpu_attention_backward_is_slower(x, w_qkv):
            return reference.projected_linear_attention(x, w_qkv, heads, scale)
        if x.shape[-2] * x.shape[-1] < CPU_PROJECTED_ATTENTION_MIN_PIXELS:
            return linear_attention(conv1x1(x, w_qkv), heads, scale)
        return torch.ops.ddpm_fast.projected_linear_attention(x, w_qkv, heads, scale)
    return linear_attention(conv1x1(x, w_qkv), heads, scale)


# The CPU attention kernels against the reference at the seed U-Net's shapes, batch 64, on the
# development machine's AMD EPYC at each level (scripts/seed_op_shapes.py):
# - forward+backward: the fused backward, small GEMMs per (sample, head), loses to the
#   reference's batched GEMMs below 16x16: 0.72-0.90x at 7x7 at AVX2 and AVX-512, and at 14x14
#   0.91-1.02x with 56 channels at AVX2 and 0.81-0.87x at baseline x86-64 (1.1-1.2x with 28
#   channels at AVX2/AVX-512). So training on such images runs the reference; at baseline
#   x86-64 (SSE2) it does at every size: the core's forward+backward there ran 0.70-0.74x the
#   reference at 16x384x28x28 (scripts/cpu_isa_table.py).
# - forward: projecting inside the kernel pays off from 14x14 on (1.5-1.9x); at 7x7 it is
#   0.94-0.98x, where a GEMM projection before the fused core is 1.05x.
CPU_ATTENTION_BACKWARD_MIN_PIXELS = 256
CPU_PROJECTED_ATTENTION_MIN_PIXELS = 100


def _cpu_attention_backward_is_slower(*tensors):
    x = tensors[0]
    slower_here = _cpu_level == "default" or x.shape[-2] * x.shape[-1] < CPU_ATTENTION_BACKWARD_MIN_PIXELS
    return slower_here and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def conv1x1(x, weight, bias=None, channels_last_out=False):
    """A 1x1 convolution as one batched GEMM: x (B, C_in, H, W), weight (C_out, C_in, 1, 1) or
    (C_out, C_in) -> (B, C_out, H, W), NCHW, or channels_last with ``channels_last_out``.

    oneDNN's 1x1 convolution on NCHW CPU tensors runs at a fraction of GEMM speed; as a batched
    GEMM it reads channels_last or NCHW input in place and writes the layout the next op wants
    (torch.matmul would fold the batch the other way and then copy).
    """
    b, c, h, w = x.shape
    c_out = weight.shape[0]
    w2d = weight.reshape(c_out, c)
    x3d = x.reshape(b, c, h * w)
    if channels_last_out:  # (B, HW, C_in) @ (C_in, C_out) -> (B, HW, C_out), channels_last
        out = torch.bmm(x3d.transpose(1, 2), w2d.t().expand(b, -1, -1))
        if bias is not None:
            out = out + bias
        return out.view(b, h, w, c_out).permute(0, 3, 1, 2)
    out = torch.bmm(w2d.expand(b, -1, -1), x3d)
    if bias is not None:
        out = out + bias[:, None]
    return out.view(b, c_out, h, w)


# ---------------------------------------------------------------- sampler_update


def sampler_update(x, eps, prev_x0, noise, step, coefs):
    """Fused step of any sampler of :mod:`ddpm_fast.samplers`; see :func:`reference.sampler_update`.

    x, eps: (B, C, H, W); prev_x0, noise: (B, C, H, W) or None; step: (B,) int64 rows of coefs
    (S, 6), float32 or x's dtype. Returns (x_next, x0), each (B, C, H, W).
    """
    if _covered(x, eps, prev_x0, noise):
        return torch.ops.ddpm_fast.sampler_update(x, eps, prev_x0, noise, step, coefs)
    return reference.sampler_update(x, eps, prev_x0, noise, step, coefs)


# ---------------------------------------------------------------- fake kernels and autograd


def stats_dtype(dtype):
    """dtype of the saved GroupNorm statistics: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _kernel_format(x):
    # The kernels keep channels_last inputs channels_last and make everything else contiguous.
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _register_fakes(namespace):
    @torch.library.register_fake(f"{namespace}::q_sample")
    def _(x_start, t, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, noise):
        return torch.empty_like(x_start, memory_format=_dense_format(x_start, noise))

    @torch.library.register_fake(f"{namespace}::p_sample_update")
    def _(x, eps, t, sqrt_recip_alphas, eps_coef, posterior_std, noise):
        return torch.empty_like(x, memory_format=_dense_format(x, eps, noise))

    @torch.library.register_fake(f"{namespace}::group_norm_act")
    def _(x, num_groups, weight, bias, scale, shift, eps, act):
        stats = x.new_empty((x.shape[0], num_groups), dtype=stats_dtype(x.dtype))
        return torch.empty_like(x, memory_format=_kernel_format(x)), stats, torch.empty_like(stats)

    @torch.library.register_fake(f"{namespace}::group_norm_act_backward")
    def _(grad_y, x, mean, rstd, num_groups, weight, bias, scale, shift, act):
        def like(p):
            return torch.empty_like(p, memory_format=torch.contiguous_format) if p is not None else x.new_empty(0)

        dx = torch.empty_like(x, memory_format=_kernel_format(x))
        return dx, like(weight), like(bias), like(scale), like(shift)

    @torch.library.register_fake(f"{namespace}::linear_attention")
    def _(qkv, heads, scale):
        b, c3, h, w = qkv.shape
        return qkv.new_empty((b, c3 // 3, h, w))

    @torch.library.register_fake(f"{namespace}::linear_attention_backward")
    def _(grad_out, qkv, heads, scale):
        return qkv.new_empty(qkv.shape)

    @torch.library.register_fake(f"{namespace}::projected_linear_attention")
    def _(x, w_qkv, heads, scale):
        b, _, h, w = x.shape
        return x.new_empty((b, w_qkv.shape[0] // 3, h, w))

    @torch.library.register_fake(f"{namespace}::projected_linear_attention_backward")
    def _(grad_out, x, w_qkv, heads, scale):
        b, _, h, w = x.shape
        return x.new_empty((b, w_qkv.shape[0], h, w))


    @torch.library.register_fake(f"{namespace}::sampler_update")
    def _(x, eps, prev_x0, noise, step, coefs):
        present = [t for t in (eps, prev_x0, noise) if t is not None]
        layout = _dense_format(x, *present)
        return torch.empty_like(x, memory_format=layout), torch.empty_like(x, memory_format=layout)


def _dense_format(x, *others):
    # The elementwise kernels keep x's layout when every input shares it, else go contiguous.
    if x.dim() == 4 and all(o.stride() == x.stride() for o in others):
        return _kernel_format(x)
    return torch.contiguous_format


def _register_autograd(namespace):
    lib = getattr(torch.ops, namespace)

    def q_sample_setup(ctx, inputs, output):
        x_start, t, a, b, noise = inputs
        ctx.save_for_backward(t, a, b)

    def q_sample_backward(ctx, grad):
        t, a, b = ctx.saved_tensors
        ga = reference.gather_timesteps(a, t, grad.dim()).to(grad.dtype)
        gb = reference.gather_timesteps(b, t, grad.dim()).to(grad.dtype)
        return grad * ga, None, None, None, grad * gb

    torch.library.register_autograd(
        f"{namespace}::q_sample", q_sample_backward, setup_context=q_sample_setup
    )

    def p_sample_setup(ctx, inputs, output):
        x, eps, t, m, e, s, noise = inputs
        ctx.save_for_backward(t, m, e, s)

    def p_sample_backward(ctx, grad):
        t, m, e, s = ctx.saved_tensors
        gm, ge, gs = (reference.gather_timesteps(v, t, grad.dim()).to(grad.dtype) for v in (m, e, s))
        return grad * gm, -grad * gm * ge, None, None, None, None, grad * gs

    torch.library.register_autograd(
        f"{namespace}::p_sample_update", p_sample_backward, setup_context=p_sample_setup
    )

    def gn_setup(ctx, inputs, output):
        x, num_groups, weight, bias, scale, shift, eps, act = inputs
        _, mean, rstd = output
        ctx.num_groups, ctx.act = num_groups, act
        ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)

    def gn_backward(ctx, grad_y, grad_mean, grad_rstd):
        x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
        dx, dw, db, dscale, dshift = lib.group_norm_act_backward(
            grad_y, x, mean, rstd, ctx.num_groups, weight, bias, scale, shift, ctx.act
        )

        def keep(grad, p):
            return grad if p is not None else None

        return (dx, None, keep(dw, weight), keep(db, bias), keep(dscale, scale),
                keep(dshift, shift), None, None)

    torch.library.register_autograd(
        f"{namespace}::group_norm_act", gn_backward, setup_context=gn_setup
    )

    def la_setup(ctx, inputs, output):
        qkv, heads, scale = inputs
        ctx.heads, ctx.scale = heads, scale
        ctx.save_for_backward(qkv)

    def la_backward(ctx, grad_out):
        (qkv,) = ctx.saved_tensors
        grad = lib.linear_attention_backward(
            grad_out.contiguous(), qkv, ctx.heads, ctx.scale
        )
        return grad, None, None

    torch.library.register_autograd(
        f"{namespace}::linear_attention", la_backward, setup_context=la_setup
    )

    def pla_setup(ctx, inputs, output):
        x, w_qkv, heads, scale = inputs
        ctx.heads, ctx.scale = heads, scale
        ctx.save_for_backward(x, w_qkv)

    def pla_backward(ctx, grad_out):
        # The kernel recomputes q, k, v in cache and returns the gradient of the qkv the forward
        # never stored; the projection's two gradients are batched GEMMs from there.
        x, w_qkv = ctx.saved_tensors
        grad_qkv = lib.projected_linear_attention_backward(
            grad_out, x, w_qkv, ctx.heads, ctx.scale
        )
        b, c, h, w = x.shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            w2d = w_qkv.reshape(w_qkv.shape[0], c)
            grad_x = conv1x1(grad_qkv, w2d.t(), channels_last_out=_kernel_format(x) == torch.channels_last)
        if ctx.needs_input_grad[1]:
            # sum_b grad_qkv[b] (O, HW) @ x[b]^T (HW, C); x as (B, HW, C) is a view in either
            # layout, so nothing is copied (einsum permuted grad_qkv into a copy first).
            x_t = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
            grad_w = torch.bmm(grad_qkv.reshape(b, w_qkv.shape[0], h * w), x_t).sum(0).reshape(w_qkv.shape)
        return grad_x, grad_w, None, None

    torch.library.register_autograd(
        f"{namespace}::projected_linear_attention", pla_backward, setup_context=pla_setup
    )

    def sampler_update_setup(ctx, inputs, output):
        x, eps, prev_x0, noise, step, coefs = inputs
        ctx.has_prev_x0, ctx.has_noise = prev_x0 is not None, noise is not None
        ctx.save_for_backward(step, coefs)

    def sampler_update_backward(ctx, grad_out, grad_x0):
        # Both outputs are linear in the inputs: each gradient is a per-sample combination of
        # the two output gradients with the same coefficients. The tables get none.
        step, coefs = ctx.saved_tensors
        rows = coefs.index_select(0, step).to(grad_out.dtype)

        def column(j):
            return rows[:, j].reshape(step.shape[0], *((1,) * (grad_out.dim() - 1)))

        grad_x = column(0) * grad_out + column(4) * grad_x0
        grad_eps = column(1) * grad_out + column(5) * grad_x0
        grad_prev = column(2) * grad_out if ctx.has_prev_x0 else None
        grad_noise = column(3) * grad_out if ctx.has_noise else None
        return grad_x, grad_eps, grad_prev, grad_noise, None, None

    torch.library.register_autograd(
        f"{namespace}::sampler_update", sampler_update_backward, setup_context=sampler_update_setup
    )


def register_fakes_and_autograd(namespace):
    """Registers the fake kernels and autograd formulas for the ops of library ``namespace``:
    ``ddpm_fast``, or the CUDA emulation's copy of its schemas in the tests."""
    _register_fakes(namespace)
    _register_autograd(namespace)


if compiled_ops_loaded():
    register_fakes_and_autograd("ddpm_fast")
