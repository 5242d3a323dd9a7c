"""MNIST and Fashion-MNIST from their official IDX files (gz or raw).

Files are verified against the published checksums (``menet.data.checksums``): the MD5 of the
official .gz file, or the SHA-256 of the decompressed content where a redistribution
recompressed the files (Debian's Fashion-MNIST package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from menet.data.checksums import verify_content
from menet.data.errors import DatasetError
from menet.data.idx import parse_idx, read_file
from menet.data.imageset import ImageSet

SPLITS = {"train": "train", "test": "t10k"}
SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or a mirror)",
    "fashion-mnist": (
        "https://github.com/zalandoresearch/fashion-mnist, or the Debian package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
    ),
}


def find_file(directory: Path, stem: str, name: str) -> Path:
    """``stem`` or ``stem.gz`` in ``directory`` or ``directory/name``; clear error if absent."""
    candidates = [d / f for d in (directory, directory / name) for f in (stem + ".gz", stem)]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(
        f"{name}: {stem}(.gz) not found in {directory}; get the official files from "
        f"{SOURCES[name]} and point --data-dir or MENET_DATA_DIR at their directory"
    )


def load_idx_dataset(name: str, split: str, directory: str | Path, verify: bool = True) -> ImageSet:
    """Load ``name`` ("mnist" or "fashion-mnist") ``split`` ("train"/"test") from IDX files
    in ``directory`` (or its subdirectory ``name``)."""
    if name not in SOURCES:
        raise ValueError(f"unknown IDX dataset {name!r}; valid: {', '.join(SOURCES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    directory = Path(directory)
    arrays = []
    for kind, ndim in (("images-idx3-ubyte", 3), ("labels-idx1-ubyte", 1)):
        stem = f"{SPLITS[split]}-{kind}"
        path = find_file(directory, stem, name)
        raw, content = read_file(path)
        if verify:
            verify_content(name, path, raw, content)
        arrays.append(parse_idx(content, str(path), ndim))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{name} {split}: {images.shape[0]} images but {labels.shape[0]} labels in {directory}"
        )
    return ImageSet(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
    )
