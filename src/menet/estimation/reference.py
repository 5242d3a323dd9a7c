"""Slow per-image references: the original ME-Net code's approach, one matrix at a time.

These are deliberately plain (numpy SVD loops, fancyimpute's Soft-Impute iteration, cvxpy)
so that tests can check the batched estimators against an obviously-correct computation and
benchmarks can measure the speed-up against the approach the paper's code took. Inputs are
numpy arrays of shape (B, m, n) and bool masks; outputs are float64 arrays.
"""

from __future__ import annotations

import numpy as np


def usvt_reference(
    a: np.ndarray, mask: np.ndarray, *, rank: int | None = None, eta: float = 0.01,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> np.ndarray:
    """USVT per matrix with numpy's SVD; ``rank`` is an int k (top k kept) or None."""
    out = np.empty(a.shape, dtype=np.float64)
    m, n = a.shape[-2:]
    for i in range(a.shape[0]):
        filled = np.where(mask[i], a[i], 0.0).astype(np.float64)
        p_hat = mask[i].mean()
        u, s, vt = np.linalg.svd(filled, full_matrices=False)
        if rank is None:
            keep = s >= (2.0 + eta) * np.sqrt(max(m, n) * p_hat)
        else:
            keep = np.arange(len(s)) < rank
        est = (u[:, keep] * s[keep]) @ vt[keep] / p_hat
        out[i] = est if clip is None else np.clip(est, *clip)
    return out


def soft_impute_reference(
    a: np.ndarray, mask: np.ndarray, *, shrinkage: float | None = None,
    max_iters: int = 100, tol: float = 1e-3,
) -> np.ndarray:
    """fancyimpute's SoftImpute.solve, per matrix, zero initial fill (exact top singular value)."""
    eps32 = np.finfo(np.float32).eps
    out = np.empty(a.shape, dtype=np.float64)
    for i in range(a.shape[0]):
        missing = ~mask[i]
        x = np.where(mask[i], a[i], 0.0).astype(np.float64)
        lam = shrinkage if shrinkage is not None else np.linalg.svd(x, compute_uv=False)[0] / 50.0
        if missing.any():
            for _ in range(max_iters):
                u, s, vt = np.linalg.svd(x, full_matrices=False)
                s = np.maximum(s - lam, 0.0)
                r = int((s > 0).sum())
                recon = (u[:, :r] * s[:r]) @ vt[:r]
                old = x[missing]
                ssd = np.sum((old - recon[missing]) ** 2)
                old_norm = np.sqrt(np.sum(old**2))
                if old_norm == 0 or (old_norm < eps32 and np.sqrt(ssd) > eps32):
                    converged = False
                else:
                    converged = np.sqrt(ssd) / old_norm < tol
                x[missing] = recon[missing]
                if converged:
                    break
        out[i] = x
    return out


def nuclear_norm_objective(x: np.ndarray, a: np.ndarray, mask: np.ndarray, mu: float) -> np.ndarray:
    """mu * ||X||_* + ||mask * (X - a)||_F^2 for each matrix of (B, m, n) arrays."""
    x = np.asarray(x, dtype=np.float64)
    nuc = np.linalg.svd(x, compute_uv=False).sum(-1)
    res = np.where(mask, x - np.where(mask, a, 0.0), 0.0)
    return mu * nuc + (res**2).sum((-2, -1))


def nuclear_norm_reference(
    a: np.ndarray, mask: np.ndarray, *, mu: float = 1.0, solver: str = "SCS", **solver_options
) -> np.ndarray:
    """The original code's per-image cvxpy problem: min mu ||X||_* + ||mask * (X - a)||_F^2."""
    import cvxpy as cp

    out = np.empty(a.shape, dtype=np.float64)
    for i in range(a.shape[0]):
        target = np.where(mask[i], a[i], 0.0).astype(np.float64)
        x = cp.Variable(a.shape[-2:])
        objective = mu * cp.normNuc(x) + cp.sum_squares(cp.multiply(mask[i].astype(float), x - target))
        cp.Problem(cp.Minimize(objective)).solve(solver=solver, **solver_options)
        out[i] = x.value
    return out


def tv_objective(x: np.ndarray, a: np.ndarray, mask: np.ndarray, weight: float) -> np.ndarray:
    """weight * TV(X) + ||mask * (X - a)||_F^2 for each matrix of (B, m, n) arrays.

    TV is isotropic with forward differences and none across the border (Neumann): the sum
    over pixels of the length of (X[i+1, j] - X[i, j], X[i, j+1] - X[i, j]), a difference
    that would leave the matrix counting as 0.
    """
    x = np.asarray(x, dtype=np.float64)
    down = np.zeros_like(x)
    right = np.zeros_like(x)
    down[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    right[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    tv = np.sqrt(down**2 + right**2).sum((-2, -1))
    res = np.where(mask, x - np.where(mask, a, 0.0), 0.0)
    return weight * tv + (res**2).sum((-2, -1))


def tv_reference(
    a: np.ndarray, mask: np.ndarray, *, weight: float = 0.12, solver: str = "CLARABEL",
    **solver_options,
) -> np.ndarray:
    """Guo et al.'s reconstruction per matrix with cvxpy: min weight TV(X) + ||mask * (X - a)||^2.

    The TV of ``tv_objective``, written out term by term: pixels with both a lower and a right
    neighbour contribute the 2-norm of their two differences, those on the last row or column
    the absolute value of their only one (cvxpy's ``cp.tv`` drops the latter).
    """
    import cvxpy as cp

    out = np.empty(a.shape, dtype=np.float64)
    m, n = a.shape[-2:]
    for i in range(a.shape[0]):
        target = np.where(mask[i], a[i], 0.0).astype(np.float64)
        x = cp.Variable((m, n))
        down = x[1:, :] - x[:-1, :]  # (m - 1, n)
        right = x[:, 1:] - x[:, :-1]  # (m, n - 1)
        terms = []
        if m > 1 and n > 1:
            pairs = cp.vstack([cp.vec(down[:, :-1], order="C"), cp.vec(right[:-1, :], order="C")])
            terms.append(cp.sum(cp.norm(pairs, 2, axis=0)))
        if m > 1:
            terms.append(cp.norm1(down[:, -1]))  # last column: only a lower neighbour
        if n > 1:
            terms.append(cp.norm1(right[-1, :]))  # last row: only a right neighbour
        fit = cp.sum_squares(cp.multiply(mask[i].astype(float), x - target))
        objective = fit + weight * sum(terms) if terms else fit
        cp.Problem(cp.Minimize(objective)).solve(solver=solver, **solver_options)
        out[i] = x.value
    return out
