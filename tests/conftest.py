"""Shared fixtures: real Fashion-MNIST images (never skipped: `make test` installs them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from menet.data import load_dataset


@pytest.fixture(scope="session")
def fashion_test_images() -> torch.Tensor:
    """The first 64 Fashion-MNIST test images as float32 (64, 1, 28, 28) in [0, 1]."""
    data = load_dataset("fashion-mnist", "test")
    return data.images[:64].to(torch.float32) / 255.0


@pytest.fixture(scope="session")
def fashion_matrices(fashion_test_images: torch.Tensor) -> torch.Tensor:
    """Those images as float64 28 x 28 matrices in [-1, 1], as the defense feeds them."""
    return fashion_test_images[:, 0].to(torch.float64) * 2 - 1


def low_rank_plus_noise(batch: int, m: int, n: int, rank: int, noise: float, seed: int) -> np.ndarray:
    """Random (batch, m, n) float64 matrices of the given rank plus Gaussian noise, entries ~ [-1, 1]."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((batch, m, rank))
    v = rng.standard_normal((batch, rank, n))
    x = u @ v / np.sqrt(rank * 4)
    return x + noise * rng.standard_normal((batch, m, n))


def bernoulli_mask(shape: tuple[int, ...], p: float, seed: int) -> np.ndarray:
    """A keep-mask from numpy's RNG (independent of menet.masking)."""
    mask = np.random.default_rng(seed).random(shape) < p
    mask.reshape(-1, *shape[-2:])[:, 0, 0] = True  # no matrix without an observed entry
    return mask


class SmallNet(torch.nn.Module):
    """A small MLP for attack tests: trains on Fashion-MNIST in a few seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU())
        self.head = torch.nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_small_net(images: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int = 4) -> SmallNet:
    """SmallNet trained with Adam on float images (N, 1, 28, 28) in [0, 1]."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = SmallNet()
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(epochs):
            order = torch.randperm(len(images))
            for start in range(0, len(images), 128):
                index = order[start : start + 128]
                loss = torch.nn.functional.cross_entropy(net(images[index]), labels[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return net.eval()


ME_SETTINGS = {"method": "usvt", "p": 0.5, "rank": 8}  # the fixture's ME-Net: low rank, so masks matter


@pytest.fixture(scope="session")
def fashion_nets() -> dict:
    """Trained small nets on 4,000 Fashion-MNIST images: two independent vanilla copies and an
    ME-Net network (trained on reconstructions per ME_SETTINGS, two masks per image), plus
    the first 500 test images (uint8) and labels."""
    from menet.defense import MatrixEstimation

    train = load_dataset("fashion-mnist", "train", verify=False)
    test = load_dataset("fashion-mnist", "test", verify=False)
    x = train.images[:4000].float() / 255
    y = train.labels[:4000]
    me = MatrixEstimation(**ME_SETTINGS, generator=torch.Generator().manual_seed(0))
    recon = torch.cat([me(x), me(x)])
    return {
        "vanilla": train_small_net(x, y, seed=1),
        "copy": train_small_net(x, y, seed=2),
        "menet": train_small_net(recon, torch.cat([y, y]), seed=3),
        "images": test.images[:500],
        "labels": test.labels[:500],
    }
