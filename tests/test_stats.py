"""menet.stats: intervals and paired comparisons against known values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

import menet.stats as st
from menet.stats import clopper_pearson, compare, compare_unpaired, mcnemar, paired_bootstrap, wilson


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (3, 10), (0, 1), (1, 1), (45, 100), (134, 300), (999, 1000)])
def test_clopper_pearson_matches_scipy_exact(k, n):
    expected = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    low, high = clopper_pearson(k, n)
    assert low == pytest.approx(expected.low, abs=1e-9) and high == pytest.approx(expected.high, abs=1e-9)
    assert (low == 0) == (k == 0) and (high == 1) == (k == n)


def test_wilson_against_a_hand_computed_value():
    # 8 of 10, z = 1.959964: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.716738,
    # half-width z / (1 + z^2/10) * sqrt(0.8 * 0.2 / 10 + z^2 / 400) = 0.226578
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.716738 - 0.226578, abs=1e-5) and high == pytest.approx(0.716738 + 0.226578, abs=1e-5)
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == 1 and wilson(0, 0) == (0.0, 1.0)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(11, 10)
    with pytest.raises(ValueError, match="level"):
        wilson(1, 2, level=1.5)


def test_mcnemar_against_a_hand_computed_case():
    # 10 examples only A gets right, 2 only B, 30 both, 8 neither: p = 2 P(Binom(12, 1/2) <= 2)
    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8)
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8)
    test = mcnemar(a, b)
    assert (test.a_only, test.b_only, test.n) == (10, 2, 50)
    assert test.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar(a, a).p_value == 1.0
    with pytest.raises(ValueError, match="same examples"):
        mcnemar(a, b[:-1])


def test_identical_outcomes_are_within_noise_and_a_clear_difference_is_not():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.4
    same = compare(a, a.copy())
    assert same.verdict == st.WITHIN_NOISE and same.a_only == same.b_only == 0
    b = a.copy()
    b[np.flatnonzero(~a)[:60]] = True  # B right on 60 more examples
    assert compare(a, b).verdict == st.B_HIGHER and compare(b, a).verdict == st.A_HIGHER
    assert "within noise" in same.words("ME-Net", "vanilla") and "ME-Net higher" in compare(b, a).words("ME-Net", "vanilla")
    small = a.copy()
    small[np.flatnonzero(~a)[:3]] = True  # 3 examples differ: the sign is not read
    assert compare(small, a).verdict == st.WITHIN_NOISE


def test_unpaired_comparison_uses_fisher():
    result = compare_unpaired(30, 100, 60, 100)
    assert result.verdict == st.B_HIGHER and result.a_only is None
    assert result.p_value == pytest.approx(scipy_stats.fisher_exact([[30, 70], [60, 40]]).pvalue)
    assert compare_unpaired(30, 100, 33, 100).verdict == st.WITHIN_NOISE


def test_bootstrap_contains_the_estimate_shrinks_with_n_and_repeats():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 500, 5000):
        table = (rng.random((3, n)) < 0.6).astype(int)
        low, high = paired_bootstrap(table)
        assert low <= table.mean() <= high
        assert paired_bootstrap(table) == (low, high)  # seeded
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(widths[0] / np.sqrt(10), rel=0.35)


def test_bootstrap_keeps_an_examples_draws_together():
    # Draws identical per example (the model is deterministic): the interval is that of n
    # examples, not of 10 n independent outcomes.
    rng = np.random.default_rng(2)
    row = (rng.random(200) < 0.5).astype(int)
    together = paired_bootstrap(np.tile(row, (10, 1)))
    single = paired_bootstrap(row[None, :])
    assert together[1] - together[0] == pytest.approx(single[1] - single[0], rel=0.15)
    independent = paired_bootstrap((rng.random((10, 200)) < 0.5).astype(int))
    assert independent[1] - independent[0] < 0.6 * (together[1] - together[0])
    assert paired_bootstrap(np.zeros((2, 0))) == (0.0, 1.0)
