"""Nuclear-norm minimisation against cvxpy (an interior-point solver), and exact recovery."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import bernoulli_mask, low_rank_plus_noise
from hypothesis import given, settings
from hypothesis import strategies as st

from menet.estimation import nuclear_norm
from menet.estimation.reference import nuclear_norm_objective, nuclear_norm_reference

# Clarabel solves the SDP to high accuracy, so its objective is the optimum to ~1e-8.
REFERENCE = {"solver": "CLARABEL"}


def relative_gap(x: np.ndarray, ref: np.ndarray, a: np.ndarray, mask: np.ndarray, mu: float) -> np.ndarray:
    ours = nuclear_norm_objective(x, a, mask, mu)
    best = nuclear_norm_objective(ref, a, mask, mu)
    return (ours - best) / best


@pytest.mark.parametrize("mu", [1.0, 0.3])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_objective_within_1e4_of_cvxpy_on_fashion_mnist(fashion_matrices, p, mu):
    a = fashion_matrices[:3].numpy()
    mask = bernoulli_mask(a.shape, p, seed=20)
    ref = nuclear_norm_reference(a, mask, mu=mu, **REFERENCE)
    for dtype in (torch.float64, torch.float32):
        got = nuclear_norm(torch.from_numpy(a).to(dtype), torch.from_numpy(mask), mu=mu).numpy()
        gap = relative_gap(got, ref, a, mask, mu)
        assert gap.max() < 1e-4, (dtype, gap)


@pytest.mark.parametrize("shape", [(8, 24), (15, 6)])
def test_objective_within_1e4_of_cvxpy_on_low_rank_plus_noise(shape):
    a = low_rank_plus_noise(4, *shape, rank=2, noise=0.1, seed=21)
    mask = bernoulli_mask(a.shape, 0.5, seed=22)
    ref = nuclear_norm_reference(a, mask, **REFERENCE)
    got = nuclear_norm(torch.from_numpy(a), torch.from_numpy(mask)).numpy()
    assert relative_gap(got, ref, a, mask, 1.0).max() < 1e-4


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 10),
    n=st.integers(1, 10),
    p=st.floats(0.1, 1.0),
    mu=st.floats(0.05, 5.0),
    scale=st.floats(0.1, 3.0),
    seed=st.integers(0, 10_000),
)
def test_property_objective_near_cvxpy_optimum(m, n, p, mu, scale, seed):
    """Any shape, keep-probability, mu and scale: within 1e-4 (relative) of Clarabel's optimum."""
    a = np.random.default_rng(seed).uniform(-scale, scale, (2, m, n))
    mask = bernoulli_mask(a.shape, p, seed + 1)
    ref = nuclear_norm_reference(a, mask, mu=mu, **REFERENCE)
    got = nuclear_norm(torch.from_numpy(a), torch.from_numpy(mask), mu=mu).numpy()
    ours = nuclear_norm_objective(got, a, mask, mu)
    best = nuclear_norm_objective(ref, a, mask, mu)
    assert np.all(ours - best <= 1e-4 * best + 1e-9), (ours, best)


def test_exact_recovery_of_low_rank_matrix():
    a = low_rank_plus_noise(2, 30, 30, rank=2, noise=0.0, seed=23) * 10
    mask = bernoulli_mask(a.shape, 0.6, seed=24)
    out = nuclear_norm(
        torch.from_numpy(a), torch.from_numpy(mask), mu=1e-3, tol=1e-10, max_iters=20000
    ).numpy()
    rel = np.linalg.norm(out - a, axis=(1, 2)) / np.linalg.norm(a, axis=(1, 2))
    assert rel.max() < 1e-3, rel


def test_each_matrix_stops_on_its_own():
    a = torch.from_numpy(low_rank_plus_noise(7, 10, 14, rank=2, noise=0.2, seed=25))
    mask = torch.from_numpy(bernoulli_mask(tuple(a.shape), 0.5, seed=26))
    together = nuclear_norm(a, mask)
    alone = torch.cat([nuclear_norm(a[i : i + 1], mask[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-10)


def test_unobserved_entries_do_not_matter():
    a = torch.from_numpy(low_rank_plus_noise(4, 9, 9, rank=2, noise=0.1, seed=27))
    mask = torch.from_numpy(bernoulli_mask(tuple(a.shape), 0.4, seed=28))
    garbage = torch.where(mask, a, torch.full_like(a, float("nan")))
    assert torch.equal(nuclear_norm(garbage, mask), nuclear_norm(a, mask))


@pytest.mark.slow
@pytest.mark.parametrize("p", [0.3, 0.5, 0.7, 0.9])
def test_objective_gap_on_many_real_images_slow(fashion_matrices, p):
    """The default stopping rule keeps the relative objective gap below 1e-4 on 16 real images."""
    a = fashion_matrices[:16].numpy()
    mask = bernoulli_mask(a.shape, p, seed=30)
    ref = nuclear_norm_reference(a, mask, **REFERENCE)
    got = nuclear_norm(torch.from_numpy(a).float(), torch.from_numpy(mask)).numpy()
    assert relative_gap(got, ref, a, mask, 1.0).max() < 1e-4


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 40),
    p=st.floats(0.05, 1.0),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_property_unobserved_entries_are_never_read(m, n, p, seed, dtype):
    """Any shape (tall ones are solved transposed), keep-probability and dtype: replacing every
    unobserved entry by NaN, Inf or huge values leaves the result bit for bit the same."""
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(rng.uniform(-1, 1, (3, m, n))).to(dtype)
    mask = torch.from_numpy(bernoulli_mask((3, m, n), p, seed + 1))
    mask[:, 0, 0] = True  # every matrix needs an observed entry
    garbage = torch.from_numpy(rng.choice([float("nan"), float("inf"), -1e30, 1e30], (3, m, n))).to(dtype)
    assert torch.equal(nuclear_norm(torch.where(mask, a, garbage), mask), nuclear_norm(a, mask))


def test_result_does_not_depend_on_batch_order_or_company(fashion_matrices):
    """Each matrix's arithmetic is its own (block sizes per matrix, grouped by size): shuffling
    the batch, or solving a matrix among others, gives the same result."""
    a = fashion_matrices[:24].float()
    mask = torch.from_numpy(bernoulli_mask(tuple(a.shape), 0.5, seed=31))
    order = torch.from_numpy(np.random.default_rng(32).permutation(24))
    together = nuclear_norm(a, mask)
    shuffled = nuclear_norm(a[order], mask[order])
    torch.testing.assert_close(shuffled, together[order], rtol=0, atol=1e-6)
    some = nuclear_norm(a[5:9], mask[5:9])
    torch.testing.assert_close(some, together[5:9], rtol=0, atol=1e-6)


def test_admm_phase_costs_iterations_never_accuracy(fashion_matrices, monkeypatch):
    """Cut ADMM after one step, or break its tracked singular vectors: FISTA's exact phase still
    reaches the same optimum (within 1e-4 of Clarabel), only with more iterations."""
    import sys

    import menet.estimation.subspace_svt as subspace

    solver = sys.modules["menet.estimation.nuclear_norm"]
    a = fashion_matrices[:3].numpy()
    mask = bernoulli_mask(a.shape, 0.5, seed=33)
    ref = nuclear_norm_reference(a, mask, **REFERENCE)
    _, normal = solver.nuclear_norm_with_stats(torch.from_numpy(a), torch.from_numpy(mask))
    monkeypatch.setattr(solver, "MAX_ADMM_ITERS", 1)
    cut, stats = solver.nuclear_norm_with_stats(torch.from_numpy(a), torch.from_numpy(mask))
    assert stats["iterations"] > normal["iterations"] + 10
    assert relative_gap(cut.numpy(), ref, a, mask, 1.0).max() < 1e-4
    monkeypatch.undo()

    def wrong_block(y: torch.Tensor):  # always the first k coordinate axes: a wrong subspace
        eye = torch.eye(y.shape[-2], y.shape[-1], dtype=y.dtype).expand_as(y)
        return eye, torch.zeros(y.shape[0], dtype=torch.bool)

    monkeypatch.setattr(subspace, "_orthonormalise", wrong_block)
    broken = solver.nuclear_norm(torch.from_numpy(a), torch.from_numpy(mask))
    assert relative_gap(broken.numpy(), ref, a, mask, 1.0).max() < 1e-4


@pytest.mark.parametrize("seed", [2, 9])
def test_unconverged_admm_hands_fista_the_data_not_its_point(seed):
    """At p = 0.2, mu = 0.58, scale 2.8, ADMM reaches its cap on some 12 x 10 matrices; FISTA's
    first step from such a point can already meet the stopping rule at a gap above 1e-4 (1.5e-4
    and 2e-4 on these seeds when ADMM's point was used), so those matrices start from the data."""
    a = np.random.default_rng(seed).uniform(-2.8, 2.8, (8, 12, 10))
    mask = bernoulli_mask(a.shape, 0.2, seed + 1)
    mask[:, 0, 0] = True
    ref = nuclear_norm_reference(a, mask, mu=0.58, **REFERENCE)
    got = nuclear_norm(torch.from_numpy(a), torch.from_numpy(mask), mu=0.58).numpy()
    assert relative_gap(got, ref, a, mask, 0.58).max() < 1e-4


def test_admm_cut_short_changes_nothing(fashion_matrices, monkeypatch):
    """A matrix whose ADMM stops at MAX_ADMM_ITERS unconverged gets FISTA from the zero-filled
    data, so cutting ADMM after 1 or 2 steps gives the same result bit for bit."""
    import sys

    solver = sys.modules["menet.estimation.nuclear_norm"]
    a = fashion_matrices[:4].float()
    mask = torch.from_numpy(bernoulli_mask(tuple(a.shape), 0.5, seed=34))
    results = []
    for cap in (1, 2):
        monkeypatch.setattr(solver, "MAX_ADMM_ITERS", cap)
        results.append(solver.nuclear_norm(a, mask))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize(("scale", "mu"), [(50.0, 0.06), (20.0, 0.1)])
def test_scaled_data_keeps_the_gap(fashion_matrices, scale, mu):
    """Solving (c a, c mu) is c times solving (a, mu): the stopping threshold follows mu / max|a|,
    so the gap stays below 1e-4 (a threshold of tol * min(1, mu) stopped at 1.2e-4 and 1.5e-4)."""
    a = fashion_matrices[:3].numpy()
    mask = bernoulli_mask(a.shape, 0.5, seed=42)
    ref = nuclear_norm_reference(a * scale, mask, mu=mu * scale, **REFERENCE)
    got = nuclear_norm(torch.from_numpy(a * scale), torch.from_numpy(mask), mu=mu * scale).numpy()
    assert relative_gap(got, ref, a * scale, mask, mu * scale).max() < 1e-4


@pytest.mark.parametrize("scale", [255.0, 10.0])
def test_scaling_the_problem_keeps_admm_steps(fashion_matrices, scale):
    """(c a, c mu) is the problem (a, mu) scaled by c: ADMM's penalty depends on tau / max|a| only,
    so it takes the same steps and gives c times the result (a penalty of 0.7 tau p took all 60
    steps at c = 255, against about 15). For c >= 1 the stopping threshold, tol * min(1, mu,
    mu / max|a|), is the same too; below 1 it tightens with mu, by design."""
    nn_module = importlib.import_module("menet.estimation.nuclear_norm")
    a = fashion_matrices[:16]
    mask = torch.from_numpy(bernoulli_mask(tuple(a.shape), 0.5, seed=43))
    base, base_stats = nn_module.nuclear_norm_with_stats(a, mask)
    scaled, scaled_stats = nn_module.nuclear_norm_with_stats(a * scale, mask, mu=scale)
    steps, scaled_steps = base_stats["admm_iterations"], scaled_stats["admm_iterations"]
    assert steps < 30 * a.shape[0]  # far from the cap, so equal counts mean something
    assert abs(scaled_steps - steps) <= 0.05 * steps, (steps, scaled_steps)
    torch.testing.assert_close(scaled / scale, base, rtol=0, atol=1e-3)


def _loop_start(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ADMM's documented start, by loops: per matrix, the neighbour mean of each unobserved entry
    (0 where no neighbour is observed) if the neighbours' mean predicts the observed entries with
    a squared error below half their variance, else the zero-filled data."""
    out = np.where(mask, a, 0.0)
    for k in range(a.shape[0]):
        m, n = a.shape[1:]

        def neighbour_values(i, j, k=k):
            return [a[k, u, v] for u in range(i - 1, i + 2) for v in range(j - 1, j + 2)
                    if (u, v) != (i, j) and 0 <= u < m and 0 <= v < n and mask[k, u, v]]

        errors = [(a[k, i, j] - np.mean(neighbour_values(i, j))) ** 2
                  for i, j in zip(*np.nonzero(mask[k])) if neighbour_values(i, j)]
        observed = a[k][mask[k]]
        if errors and np.mean(errors) < 0.5 * observed.var():
            for i, j in zip(*np.nonzero(~mask[k])):
                values = neighbour_values(i, j)
                out[k, i, j] = np.mean(values) if values else 0.0
    return out


def test_admm_start_is_the_neighbour_mean_where_it_predicts_well():
    """ADMM's start against loops: smooth matrices get the neighbour mean at unobserved entries
    (0 where none is observed), noise keeps the zero-filled data. It gets the zero-filled data,
    as the solver passes it (that unobserved entries never matter is tested on the solver)."""
    nn_module = importlib.import_module("menet.estimation.nuclear_norm")
    rng = np.random.default_rng(7)
    rows, cols = np.meshgrid(np.arange(5.0), np.arange(7.0), indexing="ij")
    smooth = (0.3 * rows - 0.2 * cols)[None] + 0.02 * rng.standard_normal((2, 5, 7))
    noise = rng.uniform(-1, 1, (2, 5, 7))
    a = np.concatenate([smooth, noise])
    mask = rng.random(a.shape) < 0.6
    mask[1] = False
    mask[1, 0, :3] = mask[1, 1, :3] = True  # far entries of matrix 1 have no observed neighbour
    expected = _loop_start(a, mask)
    assert not np.array_equal(expected[:2], np.where(mask, a, 0.0)[:2])  # smooth: filled
    np.testing.assert_array_equal(expected[2:], np.where(mask, a, 0.0)[2:])  # noise: zeros
    got = nn_module._neighbour_fill(torch.from_numpy(np.where(mask, a, 0.0)), torch.from_numpy(mask).double())
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
