"""Training, as in the seed (Adam, lr 1e-3, loss logged every 100 steps, a sample grid every
``save_and_sample_every`` steps), plus what a real run needs: a progress bar, atomic
checkpoints with resume, optional EMA weights, a seed, and automatic device choice.
"""

import copy
import dataclasses
import os
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import load_dataset
from .diffusion import LOSS_TYPES, GaussianDiffusion
from .unet import Unet
from .viz import save_grid

CHECKPOINT_NAME = "checkpoint.pt"


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None  # default: 16 for digits, 28 for Fashion-MNIST
    hflip: bool | None = None  # default: on for Fashion-MNIST, off for digits
    dim: int | None = None  # default: the image size, as in the seed
    dim_mults: tuple = (1, 2, 4)
    use_convnext: bool = True
    resnet_block_groups: int = 8
    timesteps: int = 200
    beta_schedule: str = "linear"
    loss_type: str = "huber"
    batch_size: int = 128
    lr: float = 1e-3
    steps: int = 2000
    ema_decay: float | None = None  # e.g. 0.995; None disables EMA
    log_every: int = 100
    save_and_sample_every: int = 1000
    num_samples: int = 36
    seed: int = 0
    device: str | None = None  # default: cuda when available, else cpu
    accelerate: bool = True  # swap in the compiled fused ops when available
    out_dir: str = "results"


def pick_device(device=None):
    """The named device, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unet_kwargs(config, image_size):
    return dict(
        dim=config.dim or image_size,
        channels=1,
        dim_mults=tuple(config.dim_mults),
        use_convnext=config.use_convnext,
        resnet_block_groups=config.resnet_block_groups,
    )


def save_checkpoint(path, state):
    """Write ``state`` with torch.save to a temporary file, then rename it over ``path``, so a
    crash mid-write never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint written by :func:`train`; returns its dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with 'ddpm-fast train'")
    return torch.load(path, map_location=device, weights_only=True)


def model_from_checkpoint(checkpoint, device="cpu", use_ema=True):
    """Rebuild (model, diffusion, image_size) from a checkpoint dict, EMA weights if present."""
    model = Unet(**checkpoint["unet"]).to(device)
    weights = checkpoint.get("ema") if use_ema and checkpoint.get("ema") else checkpoint["model"]
    model.load_state_dict(weights)
    model.eval()
    diffusion = GaussianDiffusion(**checkpoint["diffusion"]).to(device)
    return model, diffusion, checkpoint["image_size"]


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """ema = decay * ema + (1 - decay) * weights, for every parameter and float buffer."""
    for ema_p, p in zip(ema_model.state_dict().values(), model.state_dict().values()):
        if ema_p.dtype.is_floating_point:
            ema_p.lerp_(p, 1.0 - decay)


def train(config, resume=False, progress=True):
    """Train a U-Net on ``config.dataset``; returns (model, diffusion, list of (step, loss)).

    Writes ``checkpoint.pt`` (atomically) and ``sample-<milestone>.png`` to ``config.out_dir``
    every ``save_and_sample_every`` steps and at the end. With ``resume``, continues from the
    checkpoint there.
    """
    if config.loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={config.loss_type!r} is not known; choose one of {LOSS_TYPES}")
    out_dir = Path(config.out_dir)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, config.image_size, config.data_dir, config.hflip,
                        config.download)
    image_size = data.image_size
    kwargs = unet_kwargs(config, image_size)
    model = Unet(**kwargs).to(device)
    model.check_image_size(image_size, image_size)
    if config.accelerate:
        from .fused import accelerate

        accelerate(model)  # in place; the state_dict keys stay the seed's
    # --no-accelerate trains the pure-PyTorch reference: the diffusion's q_sample too.
    diffusion = GaussianDiffusion(config.timesteps, config.beta_schedule,
                                  fused=None if config.accelerate else False).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    ema = copy.deepcopy(model).requires_grad_(False) if config.ema_decay else None
    step, history = 0, []
    generator = torch.Generator().manual_seed(config.seed)

    if resume:
        checkpoint = load_checkpoint(out_dir / CHECKPOINT_NAME, device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if ema is not None and checkpoint.get("ema"):
            ema.load_state_dict(checkpoint["ema"])
        step, history = checkpoint["step"], [tuple(h) for h in checkpoint["history"]]
        torch.set_rng_state(checkpoint["rng"])
        generator.set_state(checkpoint["data_rng"])

    def checkpoint_state():
        return {
            "config": dataclasses.asdict(config),
            "unet": kwargs,
            "diffusion": {"timesteps": config.timesteps, "beta_schedule": config.beta_schedule},
            "image_size": image_size,
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": history,
            "rng": torch.get_rng_state(),
            "data_rng": generator.get_state(),
        }

    def save_and_sample(milestone):
        save_checkpoint(out_dir / CHECKPOINT_NAME, checkpoint_state())
        sampler = ema if ema is not None else model
        sampler.eval()
        images = diffusion.sample(sampler, image_size, batch_size=config.num_samples, channels=1,
                                  return_all_timesteps=False, progress=False)
        sampler.train()
        save_grid(images, out_dir / f"sample-{milestone}.png", nrow=6)

    batches = data.batches(config.batch_size, generator)
    bar = tqdm(total=config.steps, initial=step, desc="training", disable=not progress)
    model.train()
    while step < config.steps:
        batch = next(batches).to(device, non_blocking=True)
        t = torch.randint(0, config.timesteps, (batch.shape[0],), device=device)
        loss = diffusion.p_losses(model, batch, t, loss_type=config.loss_type)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            update_ema(ema, model, config.ema_decay)
        if step % config.log_every == 0:
            history.append((step, loss.item()))
            bar.set_postfix(loss=f"{history[-1][1]:.4f}")
            bar.write(f"step {step}: loss {history[-1][1]:.4f}")
        step += 1
        bar.update(1)
        if step % config.save_and_sample_every == 0 and step < config.steps:
            save_and_sample(step // config.save_and_sample_every)
    bar.close()
    save_and_sample("final")
    return model, diffusion, history
