"""The datasets of the paper: shape, classes, normalisation, augmentation and reader."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from menet.data import cifar, svhn, tiny_imagenet
from menet.data.errors import DatasetError
from menet.data.imageset import ImageSet
from menet.data.mnist import SOURCES as IDX_SOURCES
from menet.data.mnist import load_idx_dataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "MENET_DATA_DIR"


@dataclass(frozen=True)
class DatasetSpec:
    """What menet knows of a dataset: shape, classes, normalisation, augmentation, reader."""

    name: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # normalisation the model applies as its first layer
    std: tuple[float, ...]
    crop_padding: int  # random crop with this zero padding during training; 0 = none
    flip: bool  # random horizontal flip during training
    reader: Callable[[str, Path, bool], ImageSet]
    source: str


def _idx_reader(name: str) -> Callable[[str, Path, bool], ImageSet]:
    def read(split: str, directory: Path, verify: bool) -> ImageSet:
        return load_idx_dataset(name, split, directory, verify)

    return read


_SPECS = (
    # Madry et al.'s MNIST setting: raw [0, 1] pixels, no augmentation.
    DatasetSpec("mnist", (1, 28, 28), 10, (0.0,), (1.0,), 0, False, _idx_reader("mnist"),
                IDX_SOURCES["mnist"]),
    DatasetSpec("fashion-mnist", (1, 28, 28), 10, (0.0,), (1.0,), 0, False, _idx_reader("fashion-mnist"),
                IDX_SOURCES["fashion-mnist"]),
    DatasetSpec("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True,
                cifar.load_cifar10, cifar.SOURCE),
    # Digits: no flip (a mirrored digit is another symbol).
    DatasetSpec("svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 0, False,
                svhn.load_svhn, svhn.SOURCE),
    DatasetSpec("tiny-imagenet", (3, 64, 64), 200, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), 4, True,
                tiny_imagenet.load_tiny_imagenet, tiny_imagenet.SOURCE),
)
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
SPLITS = ("train", "test")


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec registered under ``name``; unknown names list the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None


def resolve_data_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """``data_dir``, else ``$MENET_DATA_DIR``, else Debian's directory for fashion-mnist."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    if name == "fashion-mnist":
        return DEBIAN_FASHION_MNIST
    raise DatasetError(
        f"{name}: no data directory; pass --data-dir or set {DATA_DIR_ENV} to the directory "
        f"holding the official files ({get_dataset_spec(name).source})"
    )


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, verify: bool = True) -> ImageSet:
    """Load ``split`` ("train" or "test") of dataset ``name`` from its official files.

    Returns uint8 images (N, C, H, W) and int64 labels (N,). ``verify`` checks published
    checksums where they exist.
    """
    spec = get_dataset_spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    data = spec.reader(split, resolve_data_dir(name, data_dir), verify)
    if tuple(data.images.shape[1:]) != spec.image_shape:
        raise DatasetError(f"{name}: images have shape {tuple(data.images.shape[1:])}, expected {spec.image_shape}")
    return data


__all__ = ["DATASETS", "DatasetSpec", "get_dataset_spec", "load_dataset", "resolve_data_dir"]
