"""Every mode trains and is evaluated on every dataset, read from tiny files in the official formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from official_files import write_cifar, write_split, write_svhn, write_tiny_imagenet

from menet.checkpoint import load_weights_only
from menet.config import config_from_dict
from menet.data import load_dataset
from menet.defense import MENet
from menet.runs import load_model
from menet.training import TEST_STREAM, _stream_seed, fit

MODELS = {"mnist": "lenet", "cifar10": "resnet18", "svhn": "resnet18", "tiny-imagenet": "densenet121"}


def write_dataset(name: str, directory):
    directory.mkdir(parents=True)
    if name == "mnist":
        rng = np.random.default_rng(0)
        for prefix in ("train", "t10k"):
            write_split(directory, prefix, rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, 8, dtype=np.uint8), compress=True)
    elif name == "cifar10":
        write_cifar(directory, archive=True)
    elif name == "svhn":
        write_svhn(directory / "train_32x32.mat", 8, 0)
        write_svhn(directory / "test_32x32.mat", 4, 1)
    else:
        write_tiny_imagenet(directory / "tiny-imagenet-200")


@pytest.mark.parametrize("dataset", sorted(MODELS))
@pytest.mark.parametrize("mode", ["vanilla", "menet", "menet-adv", "madry"])
def test_mode_trains_on_dataset(tmp_path, dataset, mode):
    write_dataset(dataset, tmp_path / "data")
    config = config_from_dict({
        "name": "run", "dataset": dataset, "model": MODELS[dataset], "mode": mode, "epochs": 1,
        "batch_size": 4, "train_limit": 8, "lr": 0.01, "lr_milestones": [], "data_dir": str(tmp_path / "data"),
        "verify_checksums": False, "defense": {"method": "usvt", "n_masks": 1},
        "attack": {"eps": 0.03, "step": 0.01, "steps": 1},
    })
    history = fit(config, tmp_path / "runs")
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    # The reported test accuracy is the saved, deployed model's on the dataset's test split:
    # recomputed here batch by batch with the masks of the run's test stream.
    run = tmp_path / "runs" / "run"
    model = load_model(run)
    assert isinstance(model, MENet) == mode.startswith("menet")
    network = model.classifier if isinstance(model, MENet) else model
    saved = load_weights_only(run / "model.pt")
    assert all(torch.equal(saved[k], v) for k, v in network.state_dict().items())
    test = load_dataset(dataset, "test", tmp_path / "data", verify=False)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test.labels), 4):  # masks keyed by (seed, epoch, batch start)
            if isinstance(model, MENet):
                model.preprocess.generator = torch.Generator().manual_seed(_stream_seed(0, 0, TEST_STREAM, start))
            x = test.images[start : start + 4].float() / 255
            correct += int((model(x).argmax(1) == test.labels[start : start + 4]).sum())
    assert history[0]["test_accuracy"] == correct / len(test.labels)
