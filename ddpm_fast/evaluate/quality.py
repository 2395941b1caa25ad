"""Scoring a sampler: sample images in batches from one seeded generator, and their FD."""

import time

import torch
from tqdm.auto import tqdm


def sample_images(model, diffusion, num, image_size, channels, sampler, seed=0, batch_size=64, progress=True):
    """``num`` final images (num, channels, image_size, image_size) on the CPU, sampled with
    ``sampler`` (a :class:`~ddpm_fast.diffusion.samplers.Sampler`) in batches from one generator
    seeded with ``seed``; also the wall seconds of each full batch.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    sampler.set_schedule(diffusion.alphas_cumprod64)
    images, seconds = [], []
    with tqdm(total=num, desc=f"sampling {num} images ({sampler.name}, {sampler.num_steps} steps)",
              unit="img", disable=not progress) as bar:
        while sum(len(i) for i in images) < num:
            size = min(batch_size, num - sum(len(i) for i in images))
            start = time.perf_counter()
            images.append(diffusion.sample(model, image_size, batch_size=size, channels=channels, sampler=sampler,
                                           generator=generator, progress=False, return_all_timesteps=False))
            if size == batch_size:
                seconds.append(time.perf_counter() - start)
            bar.update(size)
    return torch.cat(images), seconds


def evaluate(model, diffusion, measure, sampler, num=None, seeds=(0,), batch_size=64, progress=True):
    """Score ``model`` sampled with ``sampler`` (a :class:`~ddpm_fast.diffusion.samplers.Sampler`)
    against ``measure`` (a :class:`~ddpm_fast.evaluate.frechet.QualityMeasure`).

    Samples ``num`` images (default: ``measure.num_reference``, the size the noise floor is
    computed at) once per seed. Returns (result, images of the first seed): the result is a dict
    ready for JSON with the sampler's settings, each RNG seed's FD, their mean and standard
    deviation, the noise floor, the classifier's held-out accuracy and the median wall seconds
    of a batch of ``batch_size``.
    """
    num = num or measure.num_reference
    scores, seconds, first = [], [], None
    for seed in seeds:
        images, batch_seconds = sample_images(model, diffusion, num, measure.image_size, model.channels, sampler,
                                              seed, batch_size, progress)
        scores.append(measure.score(images))
        seconds += batch_seconds
        first = images if first is None else first
    fd = torch.tensor(scores, dtype=torch.float64)
    result = {
        "dataset": measure.dataset, "image_size": measure.image_size, **sampler.settings(), "num": num,
        "seeds": list(seeds), "fd": scores, "fd_mean": fd.mean().item(),
        "fd_std": fd.std().item() if len(scores) > 1 else 0.0, "noise_floor": measure.noise_floor,
        "classifier_accuracy": measure.accuracy, "batch_size": batch_size,
        "seconds_per_batch": torch.tensor(seconds).median().item() if seconds else None,
    }
    return result, first
