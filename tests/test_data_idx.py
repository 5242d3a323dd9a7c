"""IDX reading (MNIST / Fashion-MNIST) from files written in the official format."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from official_files import write_idx, write_split

from menet.data import DatasetError, load_dataset
from menet.data.idx import read_idx


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    return tmp_path, images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_reads_exact_pixels_and_labels(tiny, compress):
    directory, images, labels = tiny
    write_split(directory, "t10k", images, labels, compress)
    data = load_dataset("mnist", "test", directory, verify=False)
    assert data.images.shape == (7, 1, 28, 28) and str(data.images.dtype) == "torch.uint8"
    np.testing.assert_array_equal(data.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(data.labels.numpy(), labels.astype(np.int64))


def test_dataset_subdirectory_is_found(tiny):
    directory, images, labels = tiny
    (directory / "fashion-mnist").mkdir()
    write_split(directory / "fashion-mnist", "train", images, labels, True)
    assert load_dataset("fashion-mnist", "train", directory, verify=False).images.shape[0] == 7


def test_truncated_file(tiny):
    directory, images, labels = tiny
    write_idx(directory / "x.gz", images, compress=True)
    content = gzip.decompress((directory / "x.gz").read_bytes())
    (directory / "trunc").write_bytes(content[:-100])
    with pytest.raises(DatasetError, match="trunc: truncated"):
        read_idx(directory / "trunc", 3)
    (directory / "trunc.gz").write_bytes((directory / "x.gz").read_bytes()[:-30])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip"):
        read_idx(directory / "trunc.gz", 3)


def test_wrong_magic_and_foreign_file(tiny):
    directory, images, _ = tiny
    write_idx(directory / "float", images, compress=False, magic=0x00000D03)
    with pytest.raises(DatasetError, match="magic 0x00000D03, expected 0x00000803"):
        read_idx(directory / "float", 3)
    (directory / "page.html").write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(directory / "page.html", 3)
    with pytest.raises(DatasetError, match="expected 0x00000801"):
        read_idx(directory / "float", 1)


def test_trailing_data(tiny):
    directory, images, _ = tiny
    write_idx(directory / "x", images, compress=False)
    with (directory / "x").open("ab") as handle:
        handle.write(b"\0" * 3)
    with pytest.raises(DatasetError, match="trailing data"):
        read_idx(directory / "x", 3)


def test_label_count_mismatch(tiny):
    directory, images, labels = tiny
    write_split(directory, "train", images, labels[:5], True)
    with pytest.raises(DatasetError, match="7 images but 5 labels"):
        load_dataset("mnist", "train", directory, verify=False)


def test_missing_files_name_file_and_source(tmp_path):
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\(\.gz\) not found .*lecun"):
        load_dataset("mnist", "train", tmp_path)


def test_checksum_mismatch_names_file_and_values(tiny):
    directory, images, labels = tiny
    write_split(directory, "train", images, labels, True)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch .*f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        load_dataset("mnist", "train", directory)


def test_real_debian_fashion_mnist_verifies():
    data = load_dataset("fashion-mnist", "test")  # the built-in default directory, verify=True
    assert data.images.shape == (10000, 1, 28, 28)
    assert np.bincount(data.labels.numpy()).tolist() == [1000] * 10


def test_bad_names(tmp_path):
    with pytest.raises(ValueError, match="mnist, fashion-mnist, cifar10, svhn, tiny-imagenet"):
        load_dataset("kmnist")
    with pytest.raises(ValueError, match="train, test"):
        load_dataset("mnist", "val", tmp_path)
