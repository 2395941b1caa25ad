"""Evaluation: sample quality as a Fréchet distance in a small classifier's features, and pictures.

- :mod:`.classifier`: the feature classifier, trained once and cached;
- :mod:`.frechet`: the Fréchet distance and ``QualityMeasure`` (with its noise floor);
- :mod:`.quality`: scoring a sampler over several RNG seeds;
- :mod:`.pictures`: grids, the denoising GIF, the noising figure and the loss curve.
"""

from .frechet import QualityMeasure, frechet_distance
from .quality import evaluate, sample_images

__all__ = ["QualityMeasure", "evaluate", "frechet_distance", "sample_images"]
