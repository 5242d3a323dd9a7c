"""Approximate rank (paper Fig. 1) against a numpy SVD reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from menet.analysis import approx_rank


def reference_rank(matrix: np.ndarray, energy: float) -> int:
    s2 = np.linalg.svd(matrix, compute_uv=False) ** 2
    if s2.sum() == 0:
        return 0
    return int(np.searchsorted(np.cumsum(s2) / s2.sum(), energy - 1e-12) + 1)


def test_matches_numpy_on_fashion_mnist(fashion_test_images):
    ranks = approx_rank(fashion_test_images)
    expected = [reference_rank(img[0].numpy().astype(np.float64), 0.9) for img in fashion_test_images]
    assert ranks.tolist() == expected


def test_exact_low_rank_matrices_and_layouts():
    rng = np.random.default_rng(0)
    mats = np.stack([rng.standard_normal((12, k)) @ rng.standard_normal((k, 30)) for k in (1, 3, 7)])
    images = torch.from_numpy(mats.reshape(3, 12, 3, 10).transpose(0, 2, 1, 3).copy())
    assert approx_rank(images, energy=1.0).tolist() == [1, 3, 7]
    separate = approx_rank(images, energy=0.9, layout="separate")
    assert separate.shape == (3, 3)
    expected = [[reference_rank(images[i, c].numpy(), 0.9) for c in range(3)] for i in range(3)]
    assert separate.tolist() == expected


def test_zero_image_and_bad_energy():
    assert approx_rank(torch.zeros(1, 1, 5, 5)).tolist() == [0]
    with pytest.raises(ValueError, match="energy"):
        approx_rank(torch.rand(1, 1, 5, 5), energy=0.0)
