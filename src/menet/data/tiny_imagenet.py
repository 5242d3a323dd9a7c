"""Tiny-ImageNet-200 from the official ``tiny-imagenet-200/`` folder, decoded once and cached.

train/<wnid>/images/*.JPEG, val/images/*.JPEG with val/val_annotations.txt, wnids.txt (class
order). JPEGs are decoded with Pillow (greyscale converted to RGB); the decoded split is
cached as an uncompressed .npz beside the data (or under ``$MENET_CACHE_DIR``), written
atomically, and loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from menet.data.errors import DatasetError
from menet.data.imageset import ImageSet
from menet.io_atomic import atomic_path

SOURCE = "http://cs231n.stanford.edu/tiny-imagenet-200.zip (unzip it)"
FOLDER = "tiny-imagenet-200"
CACHE_ENV = "MENET_CACHE_DIR"
CACHE_VERSION = 1


def _root(directory: Path) -> Path:
    for root in (directory / FOLDER, directory):
        if (root / "wnids.txt").is_file():
            return root
    raise DatasetError(f"tiny-imagenet: {directory}/{FOLDER}/wnids.txt not found; get the data from {SOURCE}")


def _listing(root: Path, split: str) -> tuple[list[Path], list[int]]:
    wnids = (root / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        paths, labels = [], []
        for wnid in wnids:
            folder = root / "train" / wnid / "images"
            files = sorted(folder.glob("*.JPEG")) if folder.is_dir() else []
            if not files:
                raise DatasetError(f"tiny-imagenet: no JPEG images in {folder}")
            paths += files
            labels += [index[wnid]] * len(files)
        return paths, labels
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetError(f"tiny-imagenet: {annotations} not found")
    paths, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(f"{annotations}:{number}: expected 'file<TAB>wnid...' with a wnid from wnids.txt")
        paths.append(root / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return paths, labels


def _decode(paths: list[Path]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(paths), 3, 64, 64), dtype=np.uint8)
    for i, path in enumerate(paths):  # decoding is per file by nature; runs once, then cached
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(f"tiny-imagenet: {path} is listed but missing") from None
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"{path}: not a readable JPEG ({err})") from None
        if rgb.shape != (64, 64, 3):
            raise DatasetError(f"{path}: expected a 64 x 64 image, got {rgb.shape[1]} x {rgb.shape[0]}")
        images[i] = rgb.transpose(2, 0, 1)
    return images


def cache_path(root: Path, split: str) -> Path:
    """Where the decoded split is cached: beside the data, or under $MENET_CACHE_DIR."""
    name = f"menet-cache-v{CACHE_VERSION}-{split}.npz"
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env) / FOLDER / name
    return root / name


def load_tiny_imagenet(split: str, directory: Path, verify: bool = True) -> ImageSet:
    """Tiny-ImageNet ``split`` ("train" or "test" = the labelled val set) as uint8 (N, 3, 64, 64)."""
    del verify  # checksums are published for the zip only, not for the unpacked folder
    root = _root(directory)
    split_name = "train" if split == "train" else "val"
    paths, labels = _listing(root, split_name)
    cache = cache_path(root, split_name)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as stored:
                images, stored_labels = stored["images"], stored["labels"]
            if images.shape == (len(paths), 3, 64, 64) and np.array_equal(stored_labels, labels):
                return ImageSet(torch.from_numpy(images), torch.from_numpy(stored_labels.astype(np.int64)))
        except (OSError, ValueError, KeyError):
            pass  # a stale or damaged cache is rebuilt below
    images = _decode(paths)
    label_array = np.asarray(labels, dtype=np.int64)
    try:
        with atomic_path(cache) as tmp:
            with tmp.open("wb") as handle:
                np.savez(handle, images=images, labels=label_array)
    except OSError:
        pass  # a read-only data directory: work without the cache (set MENET_CACHE_DIR)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(label_array))
