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

import torch

from ..data import load_dataset
from .classifier import features, load_classifier


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
