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
