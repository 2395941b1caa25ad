"""The benchmark workloads: for each group, the reference and fused implementations of one job
on one device, with sizes that fit the device (full sizes on CUDA, small but real ones on CPU).

Each builder returns a :class:`Workload`; the suite times ``make(impl)()`` and checks once,
outside the timing, that the fused implementation computes what the reference does, and that
each peer (benchmarks/peers.py: onnxruntime, OpenVINO, compile-freezing) does.
"""

import copy
import dataclasses

import torch

from ddpm_fast import GaussianDiffusion, Unet, ops
from ddpm_fast.diffusion import DDPMSampler, make_sampler
from ddpm_fast.ops import reference
from ddpm_fast.model import accelerate

import peers
from peers import PEERS

SEED_CONFIG = dict(dim=28, channels=1, dim_mults=(1, 2, 4))
FULL_STEPS = 200
FORWARD_BATCHES = (1, 4, 16, 64, 128)
# The peer comparison's big cases, timed only by a full run (--full-peers): these groups with
# every impl, and the peers in every sampling loop. The small ones (forward at b1 and b4) always run.
FULL_RUN_GROUPS = ("unet-forward-b16", "unet-forward-b64", "unet-forward-b128",
                   "sampling-ddim50-full-b1", "sampling-ddim50-full-b64",
                   *(f"unet-forward-bf16-b{b}" for b in FORWARD_BATCHES if b > 1),
                   "sampling-loop-bf16-b1", "sampling-loop-bf16-b64")


# The sampling loops the peers run: DDPM (some of its 200 steps timed on the CPU) and DDIM-50 in
# full, in fp32; the DDPM loops in bf16 too.
PEER_LOOP_GROUPS = ("sampling-loop-b64", "sampling-loop-b1", "sampling-ddim50-full-b1", "sampling-ddim50-full-b64",
                    "sampling-loop-bf16-b1", "sampling-loop-bf16-b64")


def group_precision(group):
    """The precision a group runs in: "bf16" for the bf16 groups of the peer comparison (every
    path under bf16 autocast, OpenVINO in bf16), "fp32" for the rest."""
    return "bf16" if "-bf16-" in group else "fp32"


def precision_skip_reason(group, impl, device):
    """Why ``impl`` is not timed in ``group``'s precision on ``device`` (a bf16 group off the CPU,
    a peer that does not run in that precision), or None."""
    precision = group_precision(group)
    if precision != "fp32" and device != "cpu":
        return f"the {precision} groups are the CPU peer comparison's"
    if impl in PEERS and precision not in peers.PRECISIONS[impl]:
        return f"{impl} runs in {' or '.join(peers.PRECISIONS[impl])}: the {precision} groups time the others"
    return None


def full_run_only(group, impl):
    """Whether (group, impl) is one of the big cases of the peer comparison (see FULL_RUN_GROUPS)."""
    return group in FULL_RUN_GROUPS or (impl in PEERS and group.startswith("sampling"))


@dataclasses.dataclass
class Workload:
    """One job: ``make(impl)`` returns a zero-argument callable that runs it once."""

    group: str
    make: callable  # impl name ('reference', 'fused', 'fused+graph', 'fused+compile', 'compile-<mode>') -> callable
    check: callable  # () -> None, raises if fused and reference disagree
    extra: dict  # sizes and figures recorded in extra_info (bytes, images, steps)
    check_peer: callable = None  # impl -> None, raises if peer impl and reference disagree; None: no peers


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """fn, followed by a device synchronisation so a CUDA timing covers the work."""

    def run():
        out = fn()
        synchronize(device)
        return out

    return run


def _models(device):
    torch.manual_seed(0)
    model = Unet(**SEED_CONFIG).to(device)
    fused_model = accelerate(copy.deepcopy(model))
    return model, fused_model


def compiled(model, impl):
    """torch.compile of a model: 'compile-<mode>' of the reference, 'fused+compile' (default
    mode) of the accelerated one."""
    return torch.compile(model, mode="default" if impl == "fused+compile" else impl.removeprefix("compile-"))


def sampling_loop(device, batch, sampler="ddpm", full_steps=FULL_STEPS, group=None, cpu_steps=None,
                  precision="fp32"):
    """The full reverse loop of the blog's config with ``sampler`` in ``full_steps`` steps; on CPU a
    shorter loop of the same sampler (the same cost a step): DDPM on a shorter schedule, the
    few-step samplers in fewer steps of the same T = 200 schedule; ``cpu_steps`` sets the CPU's
    steps (``full_steps``: the whole loop on the CPU too). In bf16 the loop runs under bf16
    autocast (the U-Net in bf16, the update in fp32), as a user samples in bf16.

    The peers run a plain Python loop around their forward with ddpm_fast's update
    (:func:`peers.sample_loop`), on the same schedule and steps."""
    steps = full_steps if device.type == "cuda" else (cpu_steps or (4 if batch > 1 else 20))
    model, fused_model = _models(device)
    model.eval()
    fused_model.eval()
    shape = (batch, 1, 28, 28)
    timesteps = steps if sampler == "ddpm" else FULL_STEPS
    sampler_steps = None if sampler == "ddpm" else steps
    peer_sampler = make_sampler(sampler, steps=sampler_steps).set_schedule(GaussianDiffusion(timesteps).alphas_cumprod64)
    peer_forwards = {}

    def peer_forward(impl):
        if impl not in peer_forwards:
            peer_forwards[impl] = peers.forward(impl, model, batch, precision)
        return peer_forwards[impl]

    def make(impl):
        if impl in PEERS:
            forward = peer_forward(impl)
            return lambda: peers.sample_loop(forward, peer_sampler, torch.randn(shape))
        if impl.startswith("fused"):
            diffusion, net = GaussianDiffusion(timesteps, fused=None).to(device), fused_model
            if impl == "fused+compile":
                net = compiled(copy.deepcopy(fused_model), impl)
        else:
            diffusion = GaussianDiffusion(timesteps, fused=False).to(device)
            net = model if impl == "reference" else compiled(copy.deepcopy(model), impl)
        graph = impl == "fused+graph"

        def loop():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return diffusion.p_sample_loop(net, shape, return_all_timesteps=False, progress=False,
                                               cuda_graph=graph, sampler=sampler, steps=sampler_steps)

        return timed(loop, device)

    def check():
        outs = []
        for impl in ("reference", "fused"):
            torch.manual_seed(1)
            outs.append(make(impl)())
        torch.testing.assert_close(outs[1], outs[0], **peers.tolerance(impl, loop=True, precision=precision))

    def plain_loop(forward):
        generator = torch.Generator().manual_seed(1)
        return peers.sample_loop(forward, peer_sampler, torch.randn(shape, generator=generator), generator)

    reference_loop = []

    def check_peer(impl):
        """The peer's plain loop against the same loop around the reference forward."""
        out = plain_loop(peer_forward(impl))
        if not reference_loop:
            reference_loop.append(plain_loop(model))
        torch.testing.assert_close(out, reference_loop[0], **peers.tolerance(impl, loop=True, precision=precision),
                                   msg=lambda m: f"{impl}'s {sampler} loop ({precision}) vs the reference's (fp32): {m}")

    return Workload(group or f"sampling-loop-b{batch}", make, check,
                    dict(batch=batch, steps=steps, full_steps=full_steps, images=batch, sampler=sampler,
                         precision=precision),
                    check_peer if device.type == "cpu" else None)


def unet_forward(device, batch, precision="fp32"):
    """One forward of the seed U-Net (eval, no grad) at ``batch``, for every impl and peer, in
    ``precision`` (bf16: our paths and inductor's under bf16 autocast, OpenVINO in bf16). The
    compiled impls compile one graph for this batch size (dynamic=False), as the peers' engines
    plan for it. Records the forward's FLOPs per image, for GFLOP/s."""
    model, fused_model = _models(device)
    model.eval()
    fused_model.eval()
    x = torch.randn(batch, 1, 28, 28, device=device)
    t = torch.randint(0, FULL_STEPS, (batch,), device=device)
    forwards = {}

    def forward(impl):
        if impl not in forwards:
            if impl in PEERS:
                forwards[impl] = peers.forward(impl, model, batch, precision)
            elif impl in ("reference", "fused"):
                net = model if impl == "reference" else fused_model
                forwards[impl] = peers.in_precision(lambda x, t: net(x, t), precision)
            elif impl == "fused+compile":
                forwards[impl] = peers.in_precision(peers.compiled_forward(copy.deepcopy(fused_model)), precision)
            elif impl.startswith("compile-"):
                compiled_model = peers.compiled_forward(copy.deepcopy(model), mode=impl.removeprefix("compile-"))
                forwards[impl] = peers.in_precision(compiled_model, precision)
            else:
                raise ValueError(f"unet-forward has no impl {impl!r}")
        return forwards[impl]

    def run(impl):
        with torch.no_grad():
            return forward(impl)(x, t)

    def make(impl):
        forward(impl)
        return timed(lambda: run(impl), device)

    def check():
        torch.testing.assert_close(run("fused"), run("reference"), **peers.tolerance("fused", precision=precision))

    reference_out = []

    def check_peer(impl):
        out = run(impl).float()
        if not reference_out:
            with torch.no_grad():
                reference_out.append(model(x, t))  # fp32: the peers' bf16 is checked against it
        torch.testing.assert_close(out, reference_out[0], **peers.tolerance(impl, precision=precision),
                                   msg=lambda m: f"{impl}'s forward ({precision}) vs the reference's (fp32): {m}")

    name = "unet-forward-b" if precision == "fp32" else f"unet-forward-{precision}-b"
    return Workload(f"{name}{batch}", make, check,
                    dict(batch=batch, flops_per_image=peers.flops_per_image(model), precision=precision),
                    check_peer if device.type == "cpu" else None)


def train_step(device, batch=128):
    """Forward + backward + Adam on the blog's config with the blog's huber loss."""
    model, fused_model = _models(device)
    x = torch.randn(batch, 1, 28, 28, device=device)
    t = torch.randint(0, FULL_STEPS, (batch,), device=device)
    noise = torch.randn_like(x)

    def make(impl):
        if impl.startswith("fused"):
            net, diffusion = copy.deepcopy(fused_model), GaussianDiffusion(fused=None).to(device)
            if impl == "fused+compile":
                net = compiled(net, impl)
        else:
            net, diffusion = copy.deepcopy(model), GaussianDiffusion(fused=False).to(device)
            if impl != "reference":
                net = compiled(net, impl)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = diffusion.p_losses(net, x, t, noise=noise, loss_type="huber")
            loss.backward()
            optimizer.step()
            return loss.detach()

        return timed(step, device)

    def check():
        losses = [make(impl)() for impl in ("reference", "fused")]
        torch.testing.assert_close(losses[1], losses[0], atol=1e-4, rtol=1e-4)

    return Workload(f"train-step-b{batch}", make, check, dict(batch=batch))


def _op_workload(group, ref_fn, fused_fn, args, bytes_moved, backward=False, extra=None):
    """A workload around one op: ``ref_fn(*args)`` vs ``fused_fn(*args)``; with ``backward``,
    forward plus backward of ``(out * grad).sum()`` through every floating input."""

    def run(fn):
        if not backward:
            return fn(*args)
        leaves = [a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a
                  for a in args]
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
        return out, [a.grad for a in leaves if torch.is_tensor(a) and a.requires_grad]

    def make(impl):
        fn = {"reference": ref_fn, "fused": fused_fn}.get(impl) or torch.compile(ref_fn, mode=impl.removeprefix("compile-"))
        device = args[0].device
        return timed(lambda: run(fn), device)

    def check():
        torch.testing.assert_close(run(fused_fn), run(ref_fn), atol=1e-4, rtol=1e-4)

    return Workload(group, make, check, dict(bytes=bytes_moved, **(extra or {})))


def op_q_sample(device):
    n = 1 << 24 if device.type == "cuda" else 1 << 21
    x = torch.randn(n // 784, 1, 28, 28, device=device)
    d = GaussianDiffusion().to(device)
    t = torch.randint(0, FULL_STEPS, (x.shape[0],), device=device)
    args = (x, t, d.sqrt_alphas_cumprod, d.sqrt_one_minus_alphas_cumprod, torch.randn_like(x))
    return _op_workload("op-q_sample", reference.q_sample, ops.q_sample, args, 3 * x.numel() * 4,
                        extra=dict(elements=x.numel()))


def op_sampler_update(device):
    """One DDPM step of the sampling loop (x, eps and noise in, x_next and x0 out)."""
    n = 1 << 24 if device.type == "cuda" else 1 << 21
    x = torch.randn(n // 784, 1, 28, 28, device=device)
    ddpm = DDPMSampler().set_schedule(GaussianDiffusion().alphas_cumprod64)
    step = torch.randint(0, FULL_STEPS, (x.shape[0],), device=device)
    args = (x, torch.randn_like(x), None, torch.randn_like(x), step, ddpm.tables(device))
    return _op_workload("op-sampler_update", reference.sampler_update, ops.sampler_update, args,
                        5 * x.numel() * 4, extra=dict(elements=x.numel()))


def op_group_norm_act(device, backward):
    # Block's norm in a ResNet U-Net at 28x28: 8 groups, SiLU, time-embedding scale/shift.
    n = 64 if device.type == "cuda" else 32
    x = torch.randn(n, 64, 28, 28, device=device)
    c = x.shape[1]
    args = (x, 8, torch.rand(c, device=device) + 0.5, torch.randn(c, device=device),
            torch.randn(n, c, device=device), torch.randn(n, c, device=device), 1e-5, "silu")
    group = "op-group_norm_act-" + ("fwdbwd" if backward else "fwd")
    moved = x.numel() * 4 * (5 if backward else 2)
    return _op_workload(group, reference.group_norm_act, ops.group_norm_act, args, moved, backward,
                        extra=dict(shape=list(x.shape)))


def op_linear_attention(device, backward):
    # The blog U-Net's first LinearAttention: 4 heads of 32 over 28x28 positions.
    n = 64 if device.type == "cuda" else 16
    qkv = torch.randn(n, 3 * 128, 28, 28, device=device)
    group = "op-linear_attention-" + ("fwdbwd" if backward else "fwd")
    moved = qkv.numel() * 4 * (3 if backward else 1) + n * 128 * 784 * 4
    return _op_workload(group, reference.linear_attention, ops.linear_attention,
                        (qkv, 4, 32**-0.5), moved, backward, extra=dict(shape=list(qkv.shape)))


def op_projected_linear_attention(device):
    # The same first LinearAttention with its to_qkv projection, from the channels_last
    # activations of an accelerated CPU U-Net (the kernel skips the qkv tensor on the CPU).
    n = 64 if device.type == "cuda" else 16
    x = torch.randn(n, 28, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    w_qkv = torch.randn(3 * 128, 28, 1, 1, device=device) / 28**0.5
    moved = x.numel() * 4 + n * 128 * 784 * 4
    return _op_workload("op-projected_linear_attention-fwd", reference.projected_linear_attention,
                        ops.projected_linear_attention, (x, w_qkv, 4, 32**-0.5), moved,
                        extra=dict(shape=list(x.shape)))


BUILDERS = {
    "sampling-loop-b64": lambda d: sampling_loop(d, 64),
    "sampling-loop-b1": lambda d: sampling_loop(d, 1),
    "train-step-b128": lambda d: train_step(d, 128),
    "op-q_sample": op_q_sample,
    "op-sampler_update": op_sampler_update,
    "op-group_norm_act-fwd": lambda d: op_group_norm_act(d, False),
    "op-group_norm_act-fwdbwd": lambda d: op_group_norm_act(d, True),
    "op-linear_attention-fwd": lambda d: op_linear_attention(d, False),
    "op-linear_attention-fwdbwd": lambda d: op_linear_attention(d, True),
    "op-projected_linear_attention-fwd": op_projected_linear_attention,
    "sampling-ddim50-b64": lambda d: sampling_loop(d, 64, "ddim", 50, "sampling-ddim50-b64"),
    "sampling-dpmpp20-b64": lambda d: sampling_loop(d, 64, "dpm-solver++", 20, "sampling-dpmpp20-b64"),
    **{f"unet-forward-b{b}": (lambda d, b=b: unet_forward(d, b)) for b in FORWARD_BATCHES},
    **{f"unet-forward-bf16-b{b}": (lambda d, b=b: unet_forward(d, b, "bf16")) for b in FORWARD_BATCHES},
    "sampling-loop-bf16-b1": lambda d: sampling_loop(d, 1, group="sampling-loop-bf16-b1", precision="bf16"),
    "sampling-loop-bf16-b64": lambda d: sampling_loop(d, 64, group="sampling-loop-bf16-b64", precision="bf16"),
    # DDIM-50 in full on the CPU too: every step of the loop a user runs.
    "sampling-ddim50-full-b1": lambda d: sampling_loop(d, 1, "ddim", 50, "sampling-ddim50-full-b1", cpu_steps=50),
    "sampling-ddim50-full-b64": lambda d: sampling_loop(d, 64, "ddim", 50, "sampling-ddim50-full-b64", cpu_steps=50),
}
