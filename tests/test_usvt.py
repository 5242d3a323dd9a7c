"""USVT against a numpy SVD loop, and its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bernoulli_mask, low_rank_plus_noise
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from menet.estimation import usvt
from menet.estimation.reference import usvt_reference


@pytest.mark.parametrize(("options", "k"), [({}, None), ({"rank": 3}, 3), ({"rank_fraction": 0.8}, 9)])
@pytest.mark.parametrize("p", [0.3, 0.8])
def test_matches_numpy_reference_on_low_rank_plus_noise(options, k, p):
    a = low_rank_plus_noise(16, 12, 20, rank=2, noise=0.1, seed=1)
    mask = bernoulli_mask(a.shape, p, seed=2)
    expected = usvt_reference(a, mask, rank=k)  # int(0.8 * min(12, 20)) = 9
    got = usvt(torch.from_numpy(a), torch.from_numpy(mask), **options)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("rank_fraction", [None, 0.8])
def test_matches_numpy_reference_on_fashion_mnist(fashion_matrices, rank_fraction):
    a = fashion_matrices.numpy()
    mask = bernoulli_mask(a.shape, 0.5, seed=3)
    expected = usvt_reference(a, mask, rank=None if rank_fraction is None else int(0.8 * 28))
    got = usvt(torch.from_numpy(a), torch.from_numpy(mask), rank_fraction=rank_fraction)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-8)
    got32 = usvt(torch.from_numpy(a).float(), torch.from_numpy(mask), rank_fraction=rank_fraction)
    np.testing.assert_allclose(got32.numpy(), expected, atol=2e-3)


def test_tall_matrices_and_batch_dims():
    a = low_rank_plus_noise(6, 20, 9, rank=2, noise=0.05, seed=4)
    mask = bernoulli_mask(a.shape, 0.7, seed=5)
    expected = usvt_reference(a, mask, rank=4)
    got = usvt(torch.from_numpy(a).view(2, 3, 20, 9), torch.from_numpy(mask).view(2, 3, 20, 9), rank=4)
    np.testing.assert_allclose(got.reshape(6, 20, 9).numpy(), expected, atol=1e-9)


def test_universal_threshold_keeps_strong_low_rank_signal():
    # A rank-1 matrix with entries +-1 fully observed: its singular value sqrt(m n) = 30 is far
    # above (2 + eta) sqrt(max(m, n)) ~ 6.7, every noise-free direction is kept.
    u = np.sign(np.random.default_rng(0).standard_normal((1, 30, 1)))
    v = np.sign(np.random.default_rng(1).standard_normal((1, 1, 11)))
    a = torch.from_numpy((u @ v).astype(np.float64))
    got = usvt(a, torch.ones_like(a, dtype=torch.bool))
    torch.testing.assert_close(got, a)


def test_clip_none_and_rescaling():
    a = torch.full((1, 4, 4), 0.9, dtype=torch.float64)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, ::2] = True  # p_hat = 0.5
    unclipped = usvt(a, mask, rank=1, clip=None)
    # rank-1 zero-filled matrix rescaled by 2: rows alternate 1.8 and 0
    expected = torch.zeros(1, 4, 4, dtype=torch.float64)
    expected[0, ::2] = 1.8
    torch.testing.assert_close(unclipped, expected)
    torch.testing.assert_close(usvt(a, mask, rank=1), expected.clamp(-1, 1))


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 9),
    batch=st.integers(1, 4),
    p=st.floats(0.2, 1.0),
    seed=st.integers(0, 10_000),
    rank_fraction=st.one_of(st.none(), st.floats(0.01, 1.0)),
)
def test_property_agrees_with_reference_and_ignores_unobserved(m, n, batch, p, seed, rank_fraction):
    a = np.random.default_rng(seed).uniform(-1, 1, (batch, m, n))
    mask = bernoulli_mask(a.shape, p, seed + 1)
    rank = None if rank_fraction is None else max(1, round(rank_fraction * min(m, n)))
    expected = usvt_reference(a, mask, rank=rank)
    ta, tm = torch.from_numpy(a), torch.from_numpy(mask)
    got = usvt(ta, tm, rank=rank)
    # The threshold rule is discontinuous: skip draws where a singular value sits on it.
    # and, with a rank, where the k-th and (k+1)-th singular values (nearly) coincide.
    s = np.linalg.svd(np.where(mask, a, 0.0), compute_uv=False)
    if rank is None:
        thr = 2.01 * np.sqrt(max(m, n) * mask.mean((-2, -1)))
        assume(np.min(np.abs(s - thr[:, None])) > 1e-6)
    elif rank < s.shape[-1]:
        assume(np.min(s[:, rank - 1] - s[:, rank]) > 1e-6)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-7)
    garbage = torch.where(tm, ta, torch.full_like(ta, float("nan")))
    assert torch.equal(usvt(garbage, tm, rank=rank), got)
