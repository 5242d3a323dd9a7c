"""How far an accuracy measured on n test examples can be trusted, and whether two differ.

Pure numpy / scipy, no torch: intervals for "k of n correct" (Clopper-Pearson, Wilson), a
bootstrap interval over examples for the mean over scoring draws (each example's draws stay
together, since the draws of one example are not independent), McNemar's exact test for two
0/1 outcome vectors on the same examples, and ``compare`` that turns it into words ("A higher",
"B higher" or "within noise"). ``compare_unpaired`` (Fisher's exact test) is the fallback for
two results on different examples. Accuracies are fractions in [0, 1]; every interval is a
``(low, high)`` pair of fractions.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

LEVEL = 0.95  # the level of every interval
ALPHA = 0.05  # the significance level of every comparison
RESAMPLES = 2000  # bootstrap resamples
BOOTSTRAP_SEED = 0  # recorded beside every bootstrap interval
A_HIGHER, B_HIGHER, WITHIN_NOISE = "A higher", "B higher", "within noise"


def _check_counts(k: int, n: int, level: float) -> None:
    if not (0 <= k <= n) or n < 0:
        raise ValueError(f"need 0 <= k <= n, got k = {k}, n = {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a binomial proportion: k successes of n trials.

    Returns (low, high) in [0, 1]; (0, 1) when n = 0 (nothing measured). Conservative: the
    coverage is at least ``level`` for every true proportion. Low is 0 at k = 0, high 1 at k = n.
    """
    _check_counts(k, n, level)
    if n == 0:
        return 0.0, 1.0
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval for k successes of n trials: (low, high) in [0, 1]; (0, 1) at n = 0.

    Narrower than Clopper-Pearson, with coverage close to ``level`` on average (not at least it)."""
    _check_counts(k, n, level)
    if n == 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(1 - (1 - level) / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else low), (1.0 if k == n else high)  # exact ends, not 1 - 1e-16


def paired_bootstrap(table: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over draws and examples of a (draws, n) 0/1 table.

    Examples are resampled with replacement, each with all its draws (the draws of one example
    share its difficulty, so resampling single outcomes would understate the spread). The mean
    of a resample depends only on how many resampled examples have each per-example mean
    (0, 1/draws, ..., 1), so the resample is drawn as a multinomial over those draws + 1 values
    with their observed frequencies: the same distribution as drawing n example indices, at
    O(resamples * draws) cost. ``seed`` (recorded by callers) makes it repeatable. Returns (low,
    high) in [0, 1]; (0, 1) when n = 0. When every example has the same mean (e.g. all 0) the
    interval collapses to that point: read the Clopper-Pearson interval there.
    """
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"table must be (draws, n), got shape {table.shape}")
    draws, n = table.shape
    if n == 0 or draws == 0:
        return 0.0, 1.0
    correct = table.sum(0).astype(np.int64)  # per example: draws correct, 0..draws
    frequencies = np.bincount(correct, minlength=draws + 1) / n
    counts = np.random.default_rng(seed).multinomial(n, frequencies, size=resamples)  # (resamples, draws + 1)
    means = counts @ (np.arange(draws + 1) / draws) / n
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two 0/1 vectors on the same n examples: ``a_only`` examples
    where only A is 1, ``b_only`` where only B is; ``p_value`` two-sided, in [0, 1]."""

    p_value: float
    a_only: int
    b_only: int
    n: int


def _vectors(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).astype(bool).ravel(), np.asarray(b).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same examples, got {a.size} and {b.size}")
    return a, b


def mcnemar(a: np.ndarray, b: np.ndarray) -> McNemar:
    """McNemar's exact test on (n,) 0/1 outcomes of A and B on the same examples.

    Only discordant examples carry information: with c = a_only + b_only of them, under "A and
    B are equally accurate" a_only ~ Binomial(c, 1/2); the two-sided p-value is
    min(1, 2 P(Binomial(c, 1/2) <= min(a_only, b_only))), 1 when c = 0."""
    a, b = _vectors(a, b)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else min(1.0, 2 * float(stats.binom.cdf(min(a_only, b_only), discordant, 0.5)))
    return McNemar(p, a_only, b_only, int(a.size))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two accuracies compared: ``verdict`` is A_HIGHER, B_HIGHER or WITHIN_NOISE (at ``alpha``);
    ``a``, ``b`` the accuracies in [0, 1]; ``a_only``/``b_only`` the discordant counts (paired)
    or None (unpaired); ``method`` names the test."""

    verdict: str
    p_value: float
    a: float
    b: float
    n_a: int
    n_b: int
    a_only: int | None
    b_only: int | None
    method: str

    def words(self, label_a: str = "A", label_b: str = "B") -> str:
        """E.g. "ME-Net higher (48.0% vs 30.3%; 60 vs 7 of 300 examples differ; McNemar p < 0.001)"."""
        who = {A_HIGHER: f"{label_a} higher", B_HIGHER: f"{label_b} higher"}.get(self.verdict, WITHIN_NOISE)
        counts = (f"only {label_a} right on {self.a_only}, only {label_b} on {self.b_only} of {self.n_a} examples"
                  if self.a_only is not None else f"{self.n_a} and {self.n_b} examples, not the same ones")
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.3f}"
        return f"{who} ({100 * self.a:.1f}% vs {100 * self.b:.1f}%; {counts}; {self.method} {p})"


def _verdict(p: float, a: float, b: float, alpha: float) -> str:
    if p >= alpha or a == b:
        return WITHIN_NOISE
    return A_HIGHER if a > b else B_HIGHER


def compare(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> Comparison:
    """Compare two (n,) 0/1 outcome vectors on the same examples by McNemar's exact test:
    "A higher" / "B higher" when p < ``alpha``, else "within noise" (the sign is not read)."""
    test = mcnemar(a, b)
    rate_a, rate_b = (float(np.mean(v)) if test.n else float("nan") for v in _vectors(a, b))
    return Comparison(_verdict(test.p_value, rate_a, rate_b, alpha), test.p_value, rate_a, rate_b, test.n, test.n,
                      test.a_only, test.b_only, "McNemar exact")


def compare_unpaired(k_a: int, n_a: int, k_b: int, n_b: int, alpha: float = ALPHA) -> Comparison:
    """Compare k_a of n_a with k_b of n_b measured on different examples (Fisher's exact test,
    two-sided): weaker than ``compare``, for results that are not on the same examples."""
    _check_counts(k_a, n_a, LEVEL)
    _check_counts(k_b, n_b, LEVEL)
    if n_a == 0 or n_b == 0:
        p = 1.0
    else:
        p = float(stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)
    rate_a, rate_b = (k / n if n else float("nan") for k, n in ((k_a, n_a), (k_b, n_b)))
    return Comparison(_verdict(p, rate_a, rate_b, alpha), p, rate_a, rate_b, n_a, n_b, None, None,
                      "Fisher exact (unpaired)")


__all__ = ["ALPHA", "A_HIGHER", "B_HIGHER", "Comparison", "LEVEL", "McNemar", "WITHIN_NOISE", "clopper_pearson",
           "compare", "compare_unpaired", "mcnemar", "paired_bootstrap", "wilson"]
