"""The small CNN classifier whose features the Fréchet distance is measured in: trained on
first use and cached (see :mod:`ddpm_fast.evaluate.frechet`)."""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import load_dataset, load_labels

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
    from ..train.checkpoint import save_checkpoint  # atomic write: a crash never leaves half a cache file

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


