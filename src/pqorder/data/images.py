"""Image datasets: Fashion-MNIST (Debian ``dataset-fashion-mnist``) and scikit-learn digits.

A dataset spec is ``name[:split]``: ``fashion-mnist:test`` is the official 10,000-image
test split, ``fashion-mnist:train`` the 60,000 training images; ``digits:train|test`` is a
fixed seeded split of scikit-learn's 1,797 8×8 digits (1,297 / 500). Images come back as
float32 (N, 1, H, W), normalized with the training split's mean and standard deviation.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pqorder.data.debian import package_folder
from pqorder.errors import AssetError, ConfigError
from pqorder.paths import data_dir

FMNIST_PACKAGE = "dataset-fashion-mnist"
FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_NORM = {"fashion-mnist": (0.2860, 0.3530), "digits": (4.8842 / 16, 6.0170 / 16)}
DATASETS = tuple(_NORM)
SPLITS = ("train", "test")
DIGITS_TEST = 500


@dataclass(frozen=True)
class ImageSet:
    """Normalized images (N, C, H, W) and integer labels (N,)."""

    name: str
    images: Tensor
    labels: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1


def is_image_source(spec: str) -> bool:
    return spec.split(":", 1)[0] in DATASETS


def parse_image_spec(spec: str, default_split: str = "test") -> tuple[str, str]:
    name, _, split = spec.partition(":")
    split = split or default_split
    if name not in DATASETS:
        raise ConfigError(f"unknown image dataset '{name}'; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}' in '{spec}'; use train or test")
    return name, split


def fashion_mnist_dir() -> Path:
    """The IDX files: the system-wide Debian install, else unpacked into the cache."""
    cache = data_dir() / "fashion-mnist"
    return package_folder(FMNIST_SYSTEM, FMNIST_PACKAGE, "fashion-mnist", _FMNIST_FILES, cache)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): magic 0x00000800 | ndim, big-endian int32 dims, then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise AssetError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = fashion_mnist_dir()
    stem = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{stem}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = _read_idx(folder / f"{stem}-labels-idx1-ubyte.gz")
    return images, labels


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise AssetError(
            "the digits dataset needs scikit-learn (pip install scikit-learn)"
        ) from exc
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    pick = order[DIGITS_TEST:] if split == "train" else order[:DIGITS_TEST]
    return data.images[pick].astype(np.float32) / 16.0, data.target[pick]


@lru_cache(maxsize=4)
def load_images(spec: str) -> ImageSet:
    """``fashion-mnist:test`` (default split test), ``digits:train``, ..."""
    name, split = parse_image_spec(spec)
    images, labels = (_fashion_mnist if name == "fashion-mnist" else _digits)(split)
    mean, std = _NORM[name]
    x = (torch.from_numpy(np.ascontiguousarray(images)) - mean) / std
    return ImageSet(f"{name}:{split}", x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def sample_images(spec: str, n: int, seed: int) -> Tensor:
    """``n`` distinct images drawn with a seed from a dataset's training split (calibration)."""
    name, split = parse_image_spec(spec, default_split="train")
    data = load_images(f"{name}:{split}")
    if n > len(data.labels):
        raise ConfigError(
            f"{n} calibration images requested, {name}:{split} has {len(data.labels)}"
        )
    gen = torch.Generator().manual_seed(seed)
    return data.images[torch.randperm(len(data.labels), generator=gen)[:n]]
