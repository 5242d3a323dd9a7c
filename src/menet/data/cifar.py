"""CIFAR-10 from ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``.

The batches are pickles. They are read with a restricted unpickler that admits only builtin
containers, bytes/str/int and numpy's array reconstruction, so a crafted file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from menet.data.checksums import require_md5
from menet.data.errors import DatasetError
from menet.data.imageset import ImageSet

SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz)"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        # Protocol-2 pickles written by Python 3 encode bytes through _codecs.encode.
        ("_codecs", "encode"): lambda: __import__("codecs").encode,
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle API)
        factory = self.ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not plain data")
        return factory()


def safe_unpickle(content: bytes, source: str) -> object:
    """Unpickle CIFAR batch ``content`` with :class:`RestrictedUnpickler`; errors name ``source``."""
    try:
        return RestrictedUnpickler(io.BytesIO(content), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{source}: not a CIFAR-10 batch: {err}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise DatasetError(f"{source}: truncated or corrupt pickle ({type(err).__name__}: {err})") from None


def _parse_batch(content: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(content, source)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{source}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{source}: b'data' must be a uint8 (N, 3072) array, got {getattr(data, 'shape', type(data))}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DatasetError(f"{source}: expected {data.shape[0]} labels in 0..9, got shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _check_md5(name: str, content: bytes, source: str, verify: bool) -> None:
    expected = BATCH_MD5.get(name)
    if verify and expected is not None:
        require_md5(source, hashlib.md5(content).hexdigest(), expected)


def _read_members(directory: Path, names: list[str], verify: bool) -> dict[str, tuple[bytes, str]]:
    """Bytes of each batch file, from the extracted folder or else the tar.gz archive."""
    for folder in (directory / FOLDER, directory):
        if all((folder / n).is_file() for n in names):
            return {n: ((folder / n).read_bytes(), str(folder / n)) for n in names}
    archive = directory / ARCHIVE
    if not archive.is_file():
        raise DatasetError(
            f"cifar10: neither {directory / FOLDER}/ (with {', '.join(names)}) nor {archive} found; "
            f"get the official file from {SOURCE} and point --data-dir or MENET_DATA_DIR at its directory"
        )
    raw = archive.read_bytes()
    if verify:
        require_md5(str(archive), hashlib.md5(raw).hexdigest(), ARCHIVE_MD5)
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for n in names:
                member = tar.extractfile(f"{FOLDER}/{n}")  # read in memory: nothing is extracted
                if member is None:
                    raise KeyError(n)
                out[n] = (member.read(), f"{archive}:{FOLDER}/{n}")
    except KeyError as err:
        raise DatasetError(f"{archive}: member {FOLDER}/{err.args[0]} is missing") from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(f"{archive}: corrupt or truncated archive ({err})") from None
    return out


def load_cifar10(split: str, directory: Path, verify: bool = True) -> ImageSet:
    """CIFAR-10 ``split`` as uint8 (N, 3, 32, 32) images and int64 labels."""
    names = BATCHES[split]
    members = _read_members(directory, names, verify)
    images, labels = [], []
    for name in names:
        content, source = members[name]
        _check_md5(name, content, source, verify)
        x, y = _parse_batch(content, source)
        images.append(x)
        labels.append(y)
    return ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))
