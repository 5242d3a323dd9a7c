"""Keep-masks and the image <-> matrix layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from menet.estimation.layout import images_to_matrices, matrices_to_images, matrix_mask_shape
from menet.masking import random_mask


def test_mask_rate_and_reproducibility():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    m1 = random_mask((200, 32, 96), 0.3, g1)
    m2 = random_mask((200, 32, 96), 0.3, g2)
    assert m1.dtype == torch.bool and torch.equal(m1, m2)
    # 614,400 Bernoulli(0.3) draws: the rate is within 5 standard deviations of 0.3.
    assert abs(m1.float().mean().item() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / m1.numel())
    assert not torch.equal(m1, random_mask((200, 32, 96), 0.3, torch.Generator().manual_seed(6)))


def test_per_sample_probabilities():
    p = torch.tensor([0.1, 0.5, 1.0])
    mask = random_mask((3, 100, 100), p, torch.Generator().manual_seed(0))
    rates = mask.float().mean((1, 2))
    assert torch.allclose(rates, p, atol=0.02)
    assert mask[2].all()


@pytest.mark.parametrize("p", [0.0, -0.1, 1.01, float("nan")])
def test_bad_probability(p):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        random_mask((2, 3, 3), p)


def test_bad_probability_tensor_shape_and_type():
    with pytest.raises(ValueError, match="shape"):
        random_mask((2, 3, 3), torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(TypeError):
        random_mask((2, 3, 3), "0.5")


def test_concat_layout_matches_numpy_concatenation():
    images = torch.rand(2, 3, 4, 5)
    mats = images_to_matrices(images, "concat")
    expected = np.stack([np.concatenate(list(img), axis=1) for img in images.numpy()])
    np.testing.assert_array_equal(mats.numpy(), expected)
    assert torch.equal(matrices_to_images(mats, tuple(images.shape), "concat"), images)
    assert matrix_mask_shape((2, 3, 4, 5), "concat") == (2, 4, 15)


def test_separate_layout_round_trip():
    images = torch.rand(2, 3, 4, 5)
    assert torch.equal(matrices_to_images(images_to_matrices(images, "separate"), (2, 3, 4, 5), "separate"), images)
    assert matrix_mask_shape((2, 3, 4, 5), "separate") == (2, 1, 4, 5)


def test_unknown_layout():
    with pytest.raises(ValueError, match="concat, separate"):
        images_to_matrices(torch.rand(1, 1, 2, 2), "stacked")
