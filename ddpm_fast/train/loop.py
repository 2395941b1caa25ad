"""Training, as in the blog (Adam, lr 1e-3, loss logged every 100 steps, a sample grid every
``save_and_sample_every`` steps), plus what a real run needs: a progress bar, atomic
checkpoints with resume, optional EMA weights, a seed, automatic device choice, several
processes under ``torchrun`` (DistributedDataParallel), mixed precision, ``torch.compile``,
gradient accumulation, and a training record (metrics.csv and a loss-curve PNG).

A run's result depends on its config, not on how many processes share it: ``batch_size`` is
the global batch, the data order comes from a seeded ``DistributedSampler``, and the
timesteps, noise and flips of each step's global batch are drawn from a generator seeded by
(seed, step), of which every rank keeps its own share. So a 2-process run matches a
1-process one to float rounding, and a resumed run matches an uninterrupted one.
"""

import contextlib
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data import load_dataset
from ..diffusion import GaussianDiffusion
from ..evaluate.pictures import plot_loss_curve, save_grid
from ..model import Unet
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import check_config, pick_device, unet_kwargs
from .distributed import broadcast_from_main, check_same_on_all_ranks, mean_over_ranks, process_group
from .precision import autocast, grad_scaler
from .record import METRICS_NAME, MetricsLog

LOSS_CURVE_NAME = "loss-curve.png"


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """ema = decay * ema + (1 - decay) * weights, for every parameter and float buffer."""
    for ema_p, p in zip(ema_model.state_dict().values(), model.state_dict().values()):
        if ema_p.dtype.is_floating_point:
            ema_p.lerp_(p, 1.0 - decay)




def step_seed(seed, step):
    """The seed of step ``step``'s random draws: well mixed, and a function of (seed, step) only."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def draw_step(generator, seed, step, batch_size, image_shape, timesteps, hflip):
    """The random draws of one optimizer step's global batch, identical on every rank.

    Returns ``t: (B,)`` int64 in [0, timesteps), ``noise: (B, *image_shape)`` and ``flip: (B,)``
    bool (or None without ``hflip``), on the generator's device.
    """
    generator.manual_seed(step_seed(seed, step))
    device = generator.device
    t = torch.randint(0, timesteps, (batch_size,), generator=generator, device=device)
    noise = torch.randn((batch_size, *image_shape), generator=generator, device=device)
    flip = torch.rand(batch_size, generator=generator, device=device) < 0.5 if hflip else None
    return t, noise, flip


def train(config, resume=False, progress=True):
    """Train a U-Net on ``config.dataset``; returns (model, diffusion, list of (step, loss)).

    Runs in one process, or in each process of a ``torchrun`` job (DistributedDataParallel:
    nccl on CUDA, gloo on the CPU). Rank 0 alone writes, to ``config.out_dir``:
    ``checkpoint.pt`` (atomically), ``sample-<milestone>.png`` and ``loss-curve.png`` every
    ``save_and_sample_every`` steps and at the end, and a row of ``metrics.csv`` every
    ``log_every`` steps. With ``resume``, every rank continues from rank 0's checkpoint there.
    The returned model is the plain U-Net (no DDP or compile wrapper).
    """
    check_config(config)
    with process_group(pick_device(config.device), config.dist_timeout_s) as ctx:
        return _train(config, ctx, resume, progress)


def _resume_checkpoint(ctx, path):
    # Rank 0 reads the file and sends it to every rank, so the other nodes of a multi-node job
    # need no access to its folder; a failure to read it fails every rank with the same error.
    checkpoint = None
    if ctx.is_main:
        try:
            checkpoint = load_checkpoint(path)
        except Exception as error:  # any reason, sent to the ranks that wait for the file
            checkpoint = error
    checkpoint = broadcast_from_main(ctx, checkpoint)
    if isinstance(checkpoint, Exception):
        raise checkpoint
    return checkpoint


def _optimizer_step(step_model, ddp, diffusion, optimizer, scaler, config, x_start, t, noise):
    """One optimizer step on this rank's share of the global batch, in ``config.grad_accum``
    micro-batches: x_start, noise (b, C, H, W), t (b,). Returns the mean loss of the micro-batches
    as a device tensor (no host sync)."""
    micro_batch = x_start.shape[0] // config.grad_accum
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=x_start.device)
    for k in range(config.grad_accum):
        part = slice(k * micro_batch, (k + 1) * micro_batch)
        last = k == config.grad_accum - 1
        # DDP all-reduces the gradients in the last micro-batch's backward only.
        with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
            with autocast(x_start.device, config.precision):
                loss = diffusion.p_losses(step_model, x_start[part], t[part], noise=noise[part],
                                          loss_type=config.loss_type, min_snr_gamma=config.min_snr_gamma)
            scaler.scale(loss / config.grad_accum).backward()
        loss_sum += loss.detach().float()
    scaler.step(optimizer)  # a plain optimizer.step() unless fp16 scales the loss
    scaler.update()
    return loss_sum / config.grad_accum


def _train(config, ctx, resume, progress):
    shards = ctx.world_size * config.grad_accum
    if config.batch_size % shards:
        raise ValueError(
            f"batch_size={config.batch_size} (the global batch) must be a multiple of the "
            f"{ctx.world_size} process(es) times grad_accum={config.grad_accum}, i.e. of {shards}")
    out_dir = Path(config.out_dir)
    device = ctx.device
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    data = load_dataset(config.dataset, config.image_size, config.data_dir, config.hflip,
                        config.download).to(device)
    image_size = data.image_size
    kwargs = unet_kwargs(config, image_size)
    model = Unet(**kwargs).to(device)
    model.check_image_size(image_size, image_size)
    if config.accelerate:
        from ..model import accelerate

        accelerate(model)  # in place; the state_dict keys stay the blog's
    # --no-accelerate trains the pure-PyTorch reference: the diffusion's q_sample too.
    diffusion = GaussianDiffusion(config.timesteps, config.beta_schedule, fused=None if config.accelerate else False,
                                  prediction_type=config.prediction_type).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = grad_scaler(device, config.precision)
    ema = copy.deepcopy(model).requires_grad_(False) if config.ema_decay else None
    step, history = 0, []

    if resume:
        checkpoint = _resume_checkpoint(ctx, out_dir / CHECKPOINT_NAME)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        if ema is not None and checkpoint.get("ema"):
            ema.load_state_dict(checkpoint["ema"])
        step, history = checkpoint["step"], [tuple(h) for h in checkpoint["history"]]

    # The model the steps run through. `model` itself stays the plain U-Net, so its
    # state_dict, written to checkpoints, has no 'module.' (DDP) or '_orig_mod.' (compile)
    # prefix and loads in a single process.
    ddp = None
    if ctx.distributed:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = ddp if ddp is not None else model
    if config.compile:
        step_model = torch.compile(step_model)

    def checkpoint_state():
        return {
            "config": dataclasses.asdict(config),
            "unet": kwargs,
            # What GaussianDiffusion needs to sample the model again (prediction_type: since
            # issue 19; older checkpoints lack it and were all epsilon models).
            "diffusion": {"timesteps": config.timesteps, "beta_schedule": config.beta_schedule,
                          "prediction_type": config.prediction_type},
            "image_size": image_size,
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "history": history,
        }

    def save_and_sample(milestone):
        check_same_on_all_ranks(ctx, model, "the weights")
        if ema is not None:
            check_same_on_all_ranks(ctx, ema, "the EMA weights")
        if not ctx.is_main:
            return
        save_checkpoint(out_dir / CHECKPOINT_NAME, checkpoint_state())
        sampler = ema if ema is not None else model
        sampler.eval()
        torch.manual_seed(config.seed)  # every grid starts from the same noise: compare them
        images = diffusion.sample(sampler, image_size, batch_size=config.num_samples, channels=1,
                                  return_all_timesteps=False, progress=False)
        sampler.train()
        save_grid(images, out_dir / f"sample-{milestone}.png", nrow=6)
        if history:
            plot_loss_curve(*zip(*history), out_dir / LOSS_CURVE_NAME,
                            title=f"training loss ({config.loss_type}), step {step}")

    record = MetricsLog(out_dir / METRICS_NAME, resume_step=step if resume else None) if ctx.is_main else None
    batches = data.step_indices(config.batch_size, ctx.rank, ctx.world_size, config.seed, step)
    # This rank's places in the global batch (see ImageSet.step_indices).
    slots = torch.arange(ctx.rank, config.batch_size, ctx.world_size, device=device)
    generator = torch.Generator(device)
    image_shape = data.images.shape[1:]
    bar = tqdm(total=config.steps, initial=step, desc="training", disable=not (progress and ctx.is_main))
    timer_start, timer_step = time.perf_counter(), step
    speeds = []  # images/s of this run's logged intervals but the first, which holds the warm-up
    warmed_up = False
    model.train()
    while step < config.steps:
        t, noise, flip = draw_step(generator, config.seed, step, config.batch_size, image_shape,
                                   config.timesteps, data.hflip)
        t, noise = t[slots], noise[slots]
        x_start = data.images[next(batches).to(device, non_blocking=True)]
        if flip is not None:
            x_start = torch.where(flip[slots].view(-1, 1, 1, 1), x_start.flip(-1), x_start)
        loss = _optimizer_step(step_model, ddp, diffusion, optimizer, scaler, config,
                               x_start, t, noise)
        if ema is not None:
            update_ema(ema, model, config.ema_decay)
        if step % config.log_every == 0:
            loss_value = mean_over_ranks(ctx, loss).item()
            history.append((step, loss_value))
            if ctx.is_main:
                now = time.perf_counter()
                images_per_s = (step + 1 - timer_step) * config.batch_size / (now - timer_start)
                if warmed_up:
                    speeds.append(images_per_s)
                warmed_up = True
                timer_start, timer_step = now, step + 1
                record.write(step, loss_value, optimizer.param_groups[0]["lr"], images_per_s)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                bar.write(f"step {step}: loss {loss_value:.4f}, {images_per_s:.0f} images/s")
        step += 1
        bar.update(1)
        if step % config.save_and_sample_every == 0 and step < config.steps:
            save_and_sample(step // config.save_and_sample_every)
            timer_start, timer_step = time.perf_counter(), step
    bar.close()
    if speeds:
        bar.write(f"training speed: median {statistics.median(speeds):.0f} images/s over the "
                  f"{len(speeds)} logged intervals after the first")
    save_and_sample("final")
    return model, diffusion, history
