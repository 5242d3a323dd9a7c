"""Writers of tiny dataset files in the exact official formats, shared by the tests."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from menet.data.cifar import BATCHES, FOLDER


def write_idx(path: Path, array: np.ndarray, *, compress: bool, magic: int | None = None) -> None:
    """The official IDX layout: big-endian magic 0x0000080D (D = dims), dims, uint8 payload."""
    magic = 0x800 | array.ndim if magic is None else magic
    content = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)



def write_split(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray, compress: bool) -> None:
    suffix = ".gz" if compress else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)



def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int], bytes]:
    """An official-format batch: dict with b"data" (n x 3072 uint8, R, G, B planes) and b"labels"."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    return data, labels, pickle.dumps(batch, protocol=2)



def write_cifar(directory: Path, archive: bool, per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    written = {}
    members = {}
    for seed, name in enumerate(BATCHES["train"] + BATCHES["test"]):
        data, labels, content = cifar_batch(per_batch, seed)
        written[name] = (data, labels)
        members[name] = content
    members["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2)
    if archive:
        with tarfile.open(directory / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, content in members.items():
                info = tarfile.TarInfo(f"{FOLDER}/{name}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    else:
        (directory / FOLDER).mkdir()
        for name, content in members.items():
            (directory / FOLDER / name).write_bytes(content)
    return written



def write_svhn(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 10 means digit 0
    y[0, 0] = 10
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y



def write_tiny_imagenet(root: Path) -> None:
    rng = np.random.default_rng(0)
    wnids = ["n01443537", "n01629819"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")
    # One greyscale image, as in the real data set: must come back as RGB.
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(root / "val" / "images" / "val_0.JPEG")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / "val_1.JPEG")
    (root / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn01629819\t0\t0\t63\t63\nval_1.JPEG\tn01443537\t1\t2\t60\t61\n"
    )
