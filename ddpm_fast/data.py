"""Image data for training: Fashion-MNIST (local IDX files or a cached Hugging Face copy) and
scikit-learn's bundled 8x8 digits, the offline default.

Every source becomes an :class:`ImageSet`: all images in memory as a float tensor
(N, 1, H, W) scaled to [-1, 1], dealt to the training processes by a ``DistributedSampler``.
"""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

DATASETS = ("digits", "fashion_mnist")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """A data set that is missing, truncated or not what it claims to be."""


def read_idx(path):
    """Read an IDX file (optionally gzipped) as a numpy array, checking its header and size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:  # gzip raises these for a truncated or corrupt file
        raise DataError(f"{path}: cannot read IDX data ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header promises shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def find_idx_file(directory, stem):
    """The path of ``stem`` or ``stem.gz`` in ``directory``, or None."""
    for name in (stem, stem + ".gz"):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def load_fashion_mnist_idx(directory, split="train"):
    """Fashion-MNIST images (N, 28, 28) uint8 from the standard IDX files in ``directory``."""
    prefix = "train" if split == "train" else "t10k"
    path = find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
    if path is None:
        raise DataError(
            f"no {prefix}-images-idx3-ubyte[.gz] in {directory}; download the Fashion-MNIST "
            "IDX files there, or use --dataset digits"
        )
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    return images


def load_fashion_mnist_hf(split="train", download=False):
    """Fashion-MNIST images (N, 28, 28) uint8 from the Hugging Face ``datasets`` cache.

    Without ``download`` the hub is not contacted: the data must already be cached.
    """
    if not download:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError as error:
        raise DataError("the 'datasets' package is not installed") from error
    if not download:
        datasets.config.HF_DATASETS_OFFLINE = True
    try:
        ds = datasets.load_dataset("fashion_mnist", split=split)
    except Exception as error:  # datasets raises many types for "not cached"
        raise DataError(f"Fashion-MNIST is not in the Hugging Face cache ({error})") from error
    return np.stack([np.asarray(img.convert("L"), dtype=np.uint8) for img in ds["image"]])


def load_digits_images():
    """scikit-learn's bundled 8x8 digits (1797, 8, 8) as uint8 in [0, 255]; never downloads."""
    from sklearn.datasets import load_digits

    digits = load_digits().images  # values 0..16
    return np.round(digits * (255.0 / 16.0)).astype(np.uint8)


def load_labels(name="digits", data_dir=None):
    """Class labels (N,) int64 of a training set, in the order of :func:`load_dataset`'s images.

    digits: scikit-learn's targets 0-9; fashion_mnist: ``train-labels-idx1-ubyte[.gz]`` in
    ``data_dir`` (the labels of a Hugging Face copy are not read).
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        return torch.from_numpy(load_digits().target.astype(np.int64))
    if name != "fashion_mnist":
        raise ValueError(f"dataset={name!r} is not known; choose one of {DATASETS}")
    path = find_idx_file(data_dir, "train-labels-idx1-ubyte") if data_dir is not None else None
    if path is None:
        raise DataError(
            f"Fashion-MNIST labels need --data-dir with train-labels-idx1-ubyte[.gz] (got {data_dir})"
        )
    labels = read_idx(path)
    if labels.ndim != 1:
        raise DataError(f"{path}: expected labels of shape (N,), got {labels.shape}")
    return torch.from_numpy(labels.astype(np.int64))


class ImageSet:
    """All images in memory: ``images: (N, 1, H, W)`` float32 in [-1, 1].

    ``hflip`` says whether training flips images left-right with probability 1/2 (the blog's
    RandomHorizontalFlip); the flips themselves are drawn by the training loop, with the
    diffusion noise, so that they do not depend on the number of processes.
    """

    def __init__(self, images, name, hflip):
        self.images = images
        self.name = name
        self.hflip = hflip

    def __len__(self):
        return self.images.shape[0]

    @property
    def image_size(self):
        return self.images.shape[-1]

    def to(self, device):
        """The same set with its images on ``device`` (train on the GPU without per-step copies)."""
        return ImageSet(self.images.to(device), self.name, self.hflip)

    def step_indices(self, batch_size, rank=0, world_size=1, seed=0, start_step=0):
        """Yield forever, from optimizer step ``start_step`` on, the indices of this rank's
        share of each step's global batch of ``batch_size`` images: int64 (batch_size // world_size,).

        A ``DistributedSampler`` seeded with ``seed`` (``set_epoch`` at every pass) deals each
        epoch's shuffled order round-robin to the ranks, so image j of rank r is image
        ``j * world_size + r`` of the global batch, and a step's global batch is the same images
        whatever the number of ranks: the next ``batch_size`` of the epoch's order. An epoch
        has ``len(self) // batch_size`` steps; the few images left over are skipped, as with
        ``drop_last``. Where a step falls depends on ``start_step`` alone, so a resumed run sees
        what an uninterrupted one would.
        """
        if batch_size > len(self):
            raise ValueError(f"batch_size={batch_size} exceeds the {len(self)} images of {self.name}")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be a multiple of the {world_size} processes")
        sampler = DistributedSampler(self, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=seed, drop_last=True)
        per_rank = batch_size // world_size
        steps_per_epoch = len(self) // batch_size
        epoch, skip = divmod(start_step, steps_per_epoch)
        while True:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.long)
            for step in range(skip, steps_per_epoch):
                yield order[step * per_rank : (step + 1) * per_rank]
            epoch, skip = epoch + 1, 0


def to_model_range(images_uint8, image_size):
    """uint8 (N, H, W) -> float32 (N, 1, image_size, image_size) in [-1, 1] (bilinear resize)."""
    x = torch.from_numpy(np.array(images_uint8)).float().div_(255.0)[:, None]  # copy: IDX arrays are read-only
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0.0, 1.0)
    return x * 2 - 1


def load_dataset(name="digits", image_size=None, data_dir=None, hflip=None, download=False):
    """Load a training set by name as an :class:`ImageSet`.

    Args:
        name: 'digits' (offline default, 8x8 resized to ``image_size``, 16 if None) or
            'fashion_mnist' (28x28; IDX files in ``data_dir`` first, else the Hugging Face
            cache; ``download`` lets ``datasets`` fetch it).
        image_size: side of the square images the model sees.
        hflip: random horizontal flips; default on for Fashion-MNIST as in the blog, off for
            digits (a mirrored 3 is not a 3).
    """
    if name == "digits":
        images = load_digits_images()
        size = image_size or 16
    elif name == "fashion_mnist":
        if data_dir is not None:
            images = load_fashion_mnist_idx(data_dir)
        else:
            try:
                images = load_fashion_mnist_hf(download=download)
            except DataError as error:
                raise DataError(
                    f"Fashion-MNIST needs --data-dir with the IDX files, or a cached Hugging "
                    f"Face copy ({error}); or use --dataset digits, which needs no files"
                ) from error
        size = image_size or 28
    else:
        raise ValueError(f"dataset={name!r} is not known; choose one of {DATASETS}")
    if hflip is None:
        hflip = name == "fashion_mnist"
    return ImageSet(to_model_range(images, size), name, hflip)
