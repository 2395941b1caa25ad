"""Sample quality, offline: the Fréchet distance (FD) between generated and real images in the
feature space of a small CNN classifier trained on the same data set.

This is FID's recipe with a feature extractor that knows the data: Inception never saw 8x8
digits, and downloading it is not an option here. So that a score means something:

- the classifier is trained on first use (under a minute for the 8x8 digits on a 2-core CPU)
  and cached in a user cache directory keyed by data set, image size and training length
  (``$DDPM_FAST_CACHE``, else ``$XDG_CACHE_HOME/ddpm_fast``, else ``~/.cache/ddpm_fast``);
- its held-out accuracy is reported with every score, so the features' quality is known;
- the real images are split into two fixed disjoint halves: generated images are compared with
  the second, and the FD between the two halves is the noise floor, what a perfect generator
  drawing as many images as the first half holds scores on average.
"""

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import load_dataset, load_labels
from .samplers import DEFAULT_TIMESTEP_SPACING

CLASSIFIER_VERSION = 1  # bump when the architecture or training recipe changes: old caches retrain
CLASSIFIER_ITERATIONS = 2000  # optimizer steps of batch 64: 99 % held-out accuracy on the digits


def cache_dir():
    """Where trained classifiers are kept: ``$DDPM_FAST_CACHE``, else ``$XDG_CACHE_HOME/ddpm_fast``,
    else ``~/.cache/ddpm_fast``."""
    if os.environ.get("DDPM_FAST_CACHE"):
        return Path(os.environ["DDPM_FAST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm_fast"


class FeatureClassifier(nn.Module):
    """A small CNN classifier whose penultimate layer is the feature space of the FD.

    ``x: (N, channels, H, W)`` in [-1, 1] -> logits (N, classes); :meth:`features` gives the
    (N, 128) activations the FD compares.
    """

    def __init__(self, channels=1, classes=10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def train_classifier(images, labels, iterations=2000, batch_size=64, seed=0, progress=True):
    """Train a :class:`FeatureClassifier` on a fixed 80 % of ``images`` (N, C, H, W) with
    ``labels`` (N,); returns (classifier in eval mode, accuracy on the other 20 %).

    Seeded on its own, so the global RNG is left as it was.
    """
    n = images.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = torch.randperm(n)
        held_out, train = order[: n // 5], order[n // 5:]
        classifier = FeatureClassifier(images.shape[1], int(labels.max()) + 1)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
        for _ in tqdm(range(iterations), desc="training the FD classifier", disable=not progress):
            batch = train[torch.randint(0, train.shape[0], (batch_size,))]
            loss = F.cross_entropy(classifier(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    classifier.eval()
    with torch.no_grad():
        predicted = torch.cat([classifier(chunk).argmax(1) for chunk in images[held_out].split(1024)])
    return classifier, (predicted == labels[held_out]).double().mean().item()


def load_classifier(dataset, image_size, data_dir=None, iterations=None, progress=True):
    """The classifier of (dataset, image_size), trained for ``iterations`` steps (default
    ``CLASSIFIER_ITERATIONS``) and cached on first use. Returns (classifier in eval mode on the
    CPU, held-out accuracy).
    """
    from .train import save_checkpoint  # atomic write: a crash never leaves half a cache file

    iterations = iterations or CLASSIFIER_ITERATIONS
    name = f"classifier-{dataset}-{image_size}px-{iterations}it-v{CLASSIFIER_VERSION}.pt"
    path = cache_dir() / name
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        classifier = FeatureClassifier(state["channels"], state["classes"])
        classifier.load_state_dict(state["model"])
        return classifier.eval(), state["accuracy"]
    images = load_dataset(dataset, image_size, data_dir, hflip=False).images
    labels = load_labels(dataset, data_dir)
    classifier, accuracy = train_classifier(images, labels, iterations, progress=progress)
    save_checkpoint(path, {"model": classifier.state_dict(), "accuracy": accuracy,
                           "channels": images.shape[1], "classes": int(labels.max()) + 1})
    return classifier, accuracy


@torch.no_grad()
def features(classifier, images, batch_size=1024):
    """Classifier features of images (N, C, H, W) in [-1, 1] (clamped first, as a picture
    would be) -> (N, 128) float64."""
    chunks = images.float().clamp(-1, 1).split(batch_size)
    return torch.cat([classifier.features(chunk) for chunk in chunks]).double()


def frechet_distance(a, b):
    """FD between Gaussians fitted to feature sets a (N, D) and b (M, D), in float64:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of the symmetric
    ``S_a^(1/2) S_b S_a^(1/2)``, which has the same spectrum, so no general matrix square root
    (and none of its complex round-off) is needed.
    """
    a, b = a.double(), b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


class QualityMeasure:
    """FD of generated images against the real data set, with the numbers that qualify it.

    ``QualityMeasure(dataset, image_size)`` loads (or trains, for ``classifier_iterations``
    steps) the classifier and splits the real images into two fixed halves. ``score(images)`` is the FD of images (N, C, H, W) in [-1, 1]
    against the second half; ``noise_floor`` the FD of the first half against the second;
    ``accuracy`` the classifier's held-out accuracy; ``num_reference`` the first half's size, the
    number of images to generate for a score comparable with the floor.
    """

    def __init__(self, dataset, image_size, data_dir=None, classifier_iterations=None, progress=True):
        self.dataset, self.image_size = dataset, image_size
        self.classifier, self.accuracy = load_classifier(dataset, image_size, data_dir, classifier_iterations,
                                                         progress)
        real = load_dataset(dataset, image_size, data_dir, hflip=False).images
        order = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(0))
        half = real.shape[0] // 2
        first = features(self.classifier, real[order[:half]])
        self.reference = features(self.classifier, real[order[half:]])
        self.num_reference = half
        self.noise_floor = frechet_distance(first, self.reference)

    def score(self, images):
        return frechet_distance(features(self.classifier, images.cpu()), self.reference)


def sample_images(model, diffusion, num, image_size, channels, sampler="ddpm", steps=None, eta=0.0,
                  timestep_spacing=DEFAULT_TIMESTEP_SPACING, seed=0, batch_size=64, progress=True):
    """``num`` final images (num, channels, image_size, image_size) on the CPU, sampled in
    batches from one generator seeded with ``seed``; also the wall seconds of each full batch.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    kwargs = dict(sampler=sampler, steps=steps, eta=eta, timestep_spacing=timestep_spacing,
                  generator=generator, progress=False, return_all_timesteps=False)
    images, seconds = [], []
    with tqdm(total=num, desc=f"sampling {num} images ({sampler}, {steps or diffusion.timesteps} steps)",
              unit="img", disable=not progress) as bar:
        while sum(len(i) for i in images) < num:
            size = min(batch_size, num - sum(len(i) for i in images))
            start = time.perf_counter()
            images.append(diffusion.sample(model, image_size, batch_size=size, channels=channels, **kwargs))
            if size == batch_size:
                seconds.append(time.perf_counter() - start)
            bar.update(size)
    return torch.cat(images), seconds


def evaluate(model, diffusion, measure, sampler="ddpm", steps=None, eta=0.0,
             timestep_spacing=DEFAULT_TIMESTEP_SPACING, num=None, seeds=(0,), batch_size=64, progress=True):
    """Score ``model`` with ``diffusion``'s sampler against ``measure`` (a :class:`QualityMeasure`).

    Samples ``num`` images (default: ``measure.num_reference``, the size the noise floor is
    computed at) once per seed. Returns (result, images of the first seed): the result is a dict
    ready for JSON with each seed's FD, their mean and standard deviation, the noise floor, the
    classifier's held-out accuracy and the median wall seconds of a batch of ``batch_size``.
    """
    num = num or measure.num_reference
    scores, seconds, first = [], [], None
    for seed in seeds:
        images, batch_seconds = sample_images(model, diffusion, num, measure.image_size, model.channels, sampler,
                                              steps, eta, timestep_spacing, seed, batch_size, progress)
        scores.append(measure.score(images))
        seconds += batch_seconds
        first = images if first is None else first
    fd = torch.tensor(scores, dtype=torch.float64)
    chosen = diffusion.sampler(sampler, steps, eta, timestep_spacing)
    result = {
        "dataset": measure.dataset, "image_size": measure.image_size, "sampler": sampler,
        "steps": chosen.steps, "eta": eta, "timestep_spacing": chosen.timestep_spacing, "num": num,
        "seeds": list(seeds), "fd": scores, "fd_mean": fd.mean().item(),
        "fd_std": fd.std().item() if len(scores) > 1 else 0.0, "noise_floor": measure.noise_floor,
        "classifier_accuracy": measure.accuracy, "batch_size": batch_size,
        "seconds_per_batch": torch.tensor(seconds).median().item() if seconds else None,
    }
    return result, first
