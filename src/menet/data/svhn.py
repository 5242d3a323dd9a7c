"""SVHN (cropped digits) from the official ``train_32x32.mat`` / ``test_32x32.mat``."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from menet.data.checksums import require_md5
from menet.data.errors import DatasetError
from menet.data.imageset import ImageSet

SOURCE = "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat)"
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}
SIZES = {"train_32x32.mat": 182_040_794, "test_32x32.mat": 64_275_384}


def load_svhn(split: str, directory: Path, verify: bool = True) -> ImageSet:
    """SVHN ``split`` as uint8 (N, 3, 32, 32) images and int64 labels 0..9 (10 means digit 0)."""
    import scipy.io

    name = FILES[split]
    path = next((p for p in (directory / name, directory / "svhn" / name) if p.is_file()), None)
    if path is None:
        raise DatasetError(f"svhn: {name} not found in {directory}; get it from {SOURCE}")
    raw = path.read_bytes()
    if verify:
        size, expected_size = len(raw), SIZES.get(name)
        if expected_size is not None and size != expected_size:
            raise DatasetError(f"{path}: size {size:,} bytes, expected {expected_size:,}: truncated or not the official file")
        require_md5(str(path), hashlib.md5(raw).hexdigest(), MD5[name])
    try:
        mat = scipy.io.loadmat(io.BytesIO(raw), variable_names=["X", "y"])
    except Exception as err:  # scipy raises many types for damaged files
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(err).__name__}: {err})") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DatasetError(f"{path}: expected variables X and y, found {sorted(k for k in mat if not k.startswith('__'))}")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path}: X must be uint8 32 x 32 x 3 x N, got {x.dtype} {x.shape}")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.shape[0] != x.shape[3] or labels.min(initial=1) < 1 or labels.max(initial=1) > 10:
        raise DatasetError(f"{path}: y must hold {x.shape[3]} labels in 1..10, got shape {y.shape}")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels % 10))
