"""Soft-Impute against a per-image numpy transcription of fancyimpute's iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bernoulli_mask, low_rank_plus_noise
from hypothesis import given, settings
from hypothesis import strategies as st

from menet.estimation import soft_impute
from menet.estimation.reference import soft_impute_reference


@pytest.mark.parametrize("p", [0.5, 0.8])
def test_matches_reference_on_fashion_mnist(fashion_matrices, p):
    a = fashion_matrices[:24].numpy()
    mask = bernoulli_mask(a.shape, p, seed=7)
    expected = soft_impute_reference(a, mask)
    got = soft_impute(torch.from_numpy(a), torch.from_numpy(mask))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-8)


def test_matches_reference_on_low_rank_plus_noise_with_explicit_shrinkage():
    a = low_rank_plus_noise(12, 16, 24, rank=3, noise=0.05, seed=8)
    mask = bernoulli_mask(a.shape, 0.6, seed=9)
    expected = soft_impute_reference(a, mask, shrinkage=0.3, max_iters=30, tol=1e-4)
    got = soft_impute(torch.from_numpy(a), torch.from_numpy(mask), shrinkage=0.3, max_iters=30, tol=1e-4)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-8)


def test_float32_close_to_float64_reference(fashion_matrices):
    a = fashion_matrices[:8].numpy()
    mask = bernoulli_mask(a.shape, 0.8, seed=10)
    expected = soft_impute_reference(a, mask)
    got = soft_impute(torch.from_numpy(a).float(), torch.from_numpy(mask))
    np.testing.assert_allclose(got.numpy(), expected, atol=5e-3)


def test_observed_entries_returned_as_given_and_full_mask_is_identity():
    a = torch.from_numpy(low_rank_plus_noise(5, 10, 10, rank=2, noise=0.1, seed=11))
    mask = torch.from_numpy(bernoulli_mask(tuple(a.shape), 0.5, seed=12))
    out = soft_impute(a, mask)
    assert torch.equal(out[mask], a[mask])
    full = torch.ones_like(mask)
    assert torch.equal(soft_impute(a, full), a)


def test_exact_recovery_of_low_rank_matrix():
    a = low_rank_plus_noise(3, 30, 30, rank=2, noise=0.0, seed=13)
    mask = bernoulli_mask(a.shape, 0.6, seed=14)
    # Singular values are ~10; a shrinkage of 0.01 leaves a bias of order 1e-3 relative.
    out = soft_impute(
        torch.from_numpy(a), torch.from_numpy(mask), shrinkage=1e-2, max_iters=3000, tol=1e-12
    ).numpy()
    rel = np.linalg.norm(out - a, axis=(1, 2)) / np.linalg.norm(a, axis=(1, 2))
    assert rel.max() < 1e-2, rel
    observed_only = np.where(mask, a, 0.0)
    assert (np.linalg.norm(observed_only - a, axis=(1, 2)) / np.linalg.norm(a, axis=(1, 2))).min() > 0.5


def test_each_matrix_stops_on_its_own():
    a = torch.from_numpy(low_rank_plus_noise(9, 12, 12, rank=2, noise=0.2, seed=15))
    mask = torch.from_numpy(bernoulli_mask(tuple(a.shape), 0.5, seed=16))
    together = soft_impute(a, mask)
    alone = torch.cat([soft_impute(a[i : i + 1], mask[i : i + 1]) for i in range(9)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 8), n=st.integers(2, 8), p=st.floats(0.2, 0.95), seed=st.integers(0, 10_000))
def test_property_matches_reference_and_ignores_unobserved(m, n, p, seed):
    a = np.random.default_rng(seed).uniform(-1, 1, (3, m, n))
    mask = bernoulli_mask(a.shape, p, seed + 1)
    ta, tm = torch.from_numpy(a), torch.from_numpy(mask)
    got = soft_impute(ta, tm, max_iters=20)
    np.testing.assert_allclose(got.numpy(), soft_impute_reference(a, mask, max_iters=20), atol=1e-7)
    garbage = torch.where(tm, ta, torch.full_like(ta, float("inf")))
    assert torch.equal(soft_impute(garbage, tm, max_iters=20), got)
