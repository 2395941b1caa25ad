"""Pictures: sample grids, the denoising GIF and the blog's forward-noising figure."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images):
    """Images in [-1, 1], (..., C, H, W) -> uint8 numpy (..., H, W, C) in [0, 255]."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def make_grid(images, nrow=8, padding=2):
    """Tile images (N, C, H, W) in [-1, 1] into one uint8 picture (rows, cols, C), ``nrow`` per row."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = max(1, min(nrow, n))
    nrows = (n + ncol - 1) // ncol
    tiles = to_uint8(images)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), 255,
                   dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = tiles[i]
    return grid


def _to_pil(array, scale):
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def _auto_scale(height, target):
    # Small images (8x8 digits) are enlarged so that a tile is about `target` pixels high.
    return max(1, target // height)


def save_grid(images, path, nrow=8, scale=None):
    """Save images (N, C, H, W) in [-1, 1] as a PNG grid, upscaled ``scale`` times (nearest;
    default: tiles about 64 pixels high)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(make_grid(images, nrow), scale or _auto_scale(images.shape[-2], 64)).save(path)
    return path


def save_denoising_gif(steps, path, index=0, scale=None, frame_ms=40, hold_ms=1500, every=2):
    """Save a GIF of one sample being denoised.

    steps: (T, B, C, H, W), every reverse step's images as returned by
    :meth:`GaussianDiffusion.sample`; ``index`` picks the sample; ``index='grid'`` animates a
    grid of all of them. Every ``every``-th step becomes a frame, and the last is held.
    ``scale`` enlarges (nearest); default: a single sample about 192 pixels high.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if index != "grid" and not 0 <= index < steps.shape[1]:
        raise ValueError(f"index must lie in [0, {steps.shape[1]}), got {index}")
    picks = list(range(0, steps.shape[0], every))
    if picks[-1] != steps.shape[0] - 1:
        picks.append(steps.shape[0] - 1)
    scale = scale or _auto_scale(steps.shape[-2], 192 if index != "grid" else 64)
    frames = []
    for s in picks:
        array = make_grid(steps[s], nrow=8) if index == "grid" else to_uint8(steps[s, index])
        frames.append(_to_pil(array, scale))
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def plot_noising(diffusion, image, path, timesteps=(0, 50, 100, 150, 199), seed=0):
    """The blog's figure: one image (C, H, W) in [-1, 1] noised by q_sample at each timestep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bad = [t for t in timesteps if not 0 <= t < diffusion.timesteps]
    if bad:
        raise ValueError(f"timesteps {bad} lie outside [0, {diffusion.timesteps})")
    generator = torch.Generator().manual_seed(seed)
    x0 = image[None].float()
    fig, axs = plt.subplots(1, len(timesteps), figsize=(2.2 * len(timesteps), 2.6), squeeze=False)
    for ax, t in zip(axs[0], timesteps):
        noise = torch.randn(x0.shape, generator=generator)
        xt = diffusion.q_sample(x0, torch.tensor([t]), noise=noise)[0]
        array = to_uint8(xt)
        ax.imshow(array[..., 0] if array.shape[-1] == 1 else array, cmap="gray", vmin=0, vmax=255)
        ax.set(xticks=[], yticks=[], title=f"t = {t}")
    return _save_figure(fig, path)


def _save_figure(fig, path):
    """Lays out ``fig``, writes it to ``path`` (creating its folder) and frees it; returns the Path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_curve(steps, losses, path, title="training loss"):
    """The loss curve of a run as a PNG, on a log scale, where the slow later fall stays
    visible after the first steps' big drop: every logged loss, and from 40 of them on, their
    running mean over a twentieth of the run as a thick line (each logged loss is one batch's,
    so the thin line is noisy).

    steps, losses: equal-length sequences (the ``step`` and ``loss`` columns of metrics.csv).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    if len(steps) != len(losses):
        raise ValueError(f"steps and losses must have equal lengths, got {len(steps)} and {len(losses)}")
    steps, losses = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    window = len(losses) // 20
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(steps, losses, color="tab:blue", alpha=0.35 if window > 1 else 1.0, linewidth=0.8,
            marker="." if window <= 1 else None, label="logged loss")
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", linewidth=2,
                label=f"running mean of {window}")
    if len(losses) and losses.min() > 0:
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(ScalarFormatter())  # 0.1, 0.2 rather than 10^-1, 2x10^-1
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    return _save_figure(fig, path)
