"""CIFAR-10, SVHN and Tiny-ImageNet read from files written in their official formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from official_files import write_cifar, write_svhn, write_tiny_imagenet
from PIL import Image

from menet.data import DatasetError, load_dataset
from menet.data.cifar import BATCHES, FOLDER


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_reads_exact_pixels_and_labels(tmp_path, archive):
    written = write_cifar(tmp_path, archive)
    train = load_dataset("cifar10", "train", tmp_path, verify=False)
    expected = np.concatenate([written[n][0] for n in BATCHES["train"]]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == sum((written[n][1] for n in BATCHES["train"]), [])
    test = load_dataset("cifar10", "test", tmp_path, verify=False)
    # Channel-major planes: pixel (row 0, col 1) of the green plane is byte 1024 + 1.
    assert test.images[0, 1, 0, 1] == written["test_batch"][0][0, 1025]


class Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/menet-pickle-payload-ran"


def test_cifar10_refuses_code_execution_payload(tmp_path):
    Path(MARKER).unlink(missing_ok=True)
    write_cifar(tmp_path, archive=False)
    (tmp_path / FOLDER / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load (posix|os).system"):
        load_dataset("cifar10", "test", tmp_path, verify=False)
    assert not Path(MARKER).exists()


def test_cifar10_checksum_names_the_file(tmp_path):
    write_cifar(tmp_path, archive=False)
    with pytest.raises(DatasetError, match=r"data_batch_1: checksum mismatch: expected MD5 c99cafc152244af753f735de768cd75f"):
        load_dataset("cifar10", "train", tmp_path)


def test_cifar10_truncated_and_missing(tmp_path):
    write_cifar(tmp_path, archive=True)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DatasetError, match="corrupt or truncated archive"):
        load_dataset("cifar10", "test", tmp_path, verify=False)
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz found; get the official file"):
        load_dataset("cifar10", "test", tmp_path / "nowhere", verify=False)


def test_cifar10_truncated_batch(tmp_path):
    write_cifar(tmp_path, archive=False)
    batch = tmp_path / FOLDER / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-500])
    with pytest.raises(DatasetError, match="test_batch: .*truncated"):
        load_dataset("cifar10", "test", tmp_path, verify=False)


def test_svhn_reads_exact_pixels_and_maps_label_10_to_0(tmp_path):
    x, y = write_svhn(tmp_path / "test_32x32.mat", 6, 0)
    data = load_dataset("svhn", "test", tmp_path, verify=False)
    np.testing.assert_array_equal(data.images.numpy(), x.transpose(3, 2, 0, 1))
    assert data.labels[0] == 0
    assert data.labels.tolist() == [int(v) % 10 for v in y[:, 0]]


def test_svhn_bad_files(tmp_path):
    write_svhn(tmp_path / "train_32x32.mat", 4, 1)
    with pytest.raises(DatasetError, match=r"train_32x32.mat: size .* expected 182,040,794"):
        load_dataset("svhn", "train", tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 20)
    with pytest.raises(DatasetError, match="not a readable MATLAB file"):
        load_dataset("svhn", "test", tmp_path, verify=False)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(DatasetError, match="y must hold 2 labels"):
        load_dataset("svhn", "test", tmp_path, verify=False)


def pillow_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def test_tiny_imagenet_reads_pixels_labels_and_caches(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    train = load_dataset("tiny-imagenet", "train", tmp_path)
    assert train.images.shape == (4, 3, 64, 64) and train.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(train.images[2].numpy(), pillow_rgb(root / "train" / "n01629819" / "images" / "n01629819_0.JPEG"))
    val = load_dataset("tiny-imagenet", "test", tmp_path)
    assert val.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(val.images[0].numpy(), pillow_rgb(root / "val" / "images" / "val_0.JPEG"))
    caches = sorted(p.name for p in root.glob("menet-cache-*.npz"))
    assert caches == ["menet-cache-v1-train.npz", "menet-cache-v1-val.npz"]
    # Second load comes from the cache: the JPEGs are no longer needed.
    for jpeg in root.rglob("*.JPEG"):
        jpeg.write_bytes(b"garbage")
    again = load_dataset("tiny-imagenet", "train", tmp_path)
    np.testing.assert_array_equal(again.images.numpy(), train.images.numpy())


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(DatasetError, match="wnids.txt not found"):
        load_dataset("tiny-imagenet", "train", tmp_path)
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    (root / "val" / "images" / "val_1.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="val_1.JPEG: not a readable JPEG"):
        load_dataset("tiny-imagenet", "test", tmp_path)
    assert not list(root.glob("menet-cache-*val*"))  # nothing written half-way
