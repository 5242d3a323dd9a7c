"""Singular value soft thresholding from a tracked block of top singular vectors.

An iterative solver thresholds a slowly changing matrix at every step, and the result keeps
only the r singular values above the threshold, r often well below min(m, n) (median 8 of 28
for Fashion-MNIST at p = 0.5, 13 of 32 for CIFAR-shaped 32 x 96 matrices). Then a block of
k = r + MARGIN left singular vectors from the previous step, refreshed by one subspace (power)
iteration on the Gram matrix and a Rayleigh-Ritz projection, gives the step for the price of
a k x k eigh instead of an m x m one (LAPACK's batched eigh loops one matrix at a time: 14 ms
per 1024 matrices at k = 16 against 51 ms at 32 on one core). The block is orthonormalised
largest Ritz value first, which keeps the projected k x k matrix near diagonal form, so the
compiled Jacobi eigensolver of ``small_eigh`` finishes it in 2-3 sweeps (3.6-6.7x LAPACK on
these matrices, benchmarks/RESULTS.md); on the CPU the whole step (power step, QR, projection,
eigh) is one compiled call, ``small_eigh.rayleigh_ritz``, and up to m = 40 the whole threshold
step of a batch, every block size and the filters, is one: ``small_eigh.threshold_step``.

The result is exact when the block spans the top-r subspace, and approximate otherwise (a
direction missing from the block is pulled in over the next steps, as in subspace
iteration): callers use it where an inexact step costs iterations, not accuracy. A matrix
whose every Ritz value passes the threshold may be missing a direction, so its next block is
the full decomposition; so is a block whose orthonormalisation fails (rank below k).

Work is grouped by block size: one batched call per distinct k (or one call in all), never a
Python loop over matrices.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from menet.estimation import small_eigh

MARGIN = 2  # Ritz vectors kept beyond those above the threshold
SIZE_STEP = 4  # block sizes are multiples of this
MIN_SAVING = 8  # a block must be at least this much smaller than the matrix to be used


class Thresholded(NamedTuple):
    x: Tensor  # (B, m, n) soft-thresholded matrices
    basis: Tensor  # (B, m, m): the last ``size`` columns hold this step's Ritz vectors, ascending
    size: Tensor  # (B,) int64: block size to use at the next step (m = full decomposition)
    flops: float  # floating-point operations of this step, by the count of ``step_flops``


def step_flops(m: int, n: int, k: int) -> float:
    """Floating-point operations of one threshold of an m x n matrix (m <= n) with a block of k
    vectors (k = m: full eigh), counting 2 per multiply-add: Gram matrix 2 m^2 n; for a block,
    power step 2 m^2 k, Householder QR 4 m k^2, projection 2 m^2 k + 2 m k^2, Ritz vectors
    2 m k^2; eigh with vectors 9 k^3 (Golub and Van Loan's count for symmetric QR); filter
    matrix 2 m^2 k and its product with the matrix 2 m^2 n."""
    block = 0.0 if k >= m else 4.0 * m * m * k + 8.0 * m * k * k  # the five block terms above
    return 2.0 * m * m * n + block + 9.0 * k**3 + 2.0 * m * m * k + 2.0 * m * m * n


def full_sizes(batch: int, m: int, device: torch.device) -> Tensor:
    """Block sizes that ask ``threshold_tracked`` for full decompositions (B,)."""
    return torch.full((batch,), m, dtype=torch.long, device=device)


def threshold_full(v: Tensor, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
    """Soft-threshold the singular values of v (B, m, n), m <= n, at ``threshold`` ((B, 1) or a
    number) exactly (eigh of the full Gram matrix, by ``small_eigh``): (thresholded matrices
    (B, m, n), singular values of v (B, m) ascending). Not for autograd (``spectral_filter`` is)."""
    values, vecs = small_eigh.eigh(v @ v.mT, near_diagonal=False)
    filter_matrix, _ = small_eigh.soft_threshold_filter(values, vecs, threshold)
    return filter_matrix @ v, values.clamp_min(0).sqrt()


def threshold_tracked(v: Tensor, threshold: Tensor, basis: Tensor | None, size: Tensor) -> Thresholded:
    """Soft-threshold the singular values of v (B, m, n), m <= n, at ``threshold`` (B, 1).

    ``basis`` (B, m, m) and ``size`` (B,) come from the previous step's result (``basis`` None
    and ``size`` = m for full decompositions); ``basis`` is updated in place. Returns the
    thresholded matrices, the new Ritz vectors and the block size for the next step.
    """
    batch, m, n = v.shape
    if basis is None:
        basis = torch.zeros(batch, m, m, dtype=v.dtype, device=v.device)
    # Sizes rounded up to a multiple of SIZE_STEP: fewer, larger groups (less per-call overhead).
    sizes = ((size + SIZE_STEP - 1) // SIZE_STEP * SIZE_STEP).clamp(max=m)
    sizes = torch.where(sizes > m - MIN_SAVING, torch.full_like(sizes, m), sizes)
    gram = v @ v.mT
    counts = torch.bincount(sizes, minlength=m + 1).tolist()
    flops = sum(count * step_flops(m, n, k) for k, count in enumerate(counts) if count)
    if small_eigh.threshold_step_runs(gram, basis):  # every block size in one compiled call
        filters, next_size, failed = small_eigh.threshold_step(gram, basis, sizes, threshold, MARGIN)
        if bool(failed.any()):  # nothing written for these: the groups below, with their fallbacks
            bad = failed.nonzero().flatten()
            basis_bad = basis[bad]
            filters[bad], next_size[bad] = _threshold_groups(gram[bad], basis_bad, sizes[bad], threshold[bad])
            basis[bad] = basis_bad
    else:
        filters, next_size = _threshold_groups(gram, basis, sizes, threshold)
    # One product with v at the end, so that the m x n matrices are never gathered by group.
    return Thresholded(filters @ v, basis, next_size, flops)


def _threshold_groups(gram: Tensor, basis: Tensor, sizes: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """``threshold_tracked``'s step by torch calls, one group per block size: (filter matrices
    U diag(w) U^T (B, m, m), next block sizes (B,)); ``basis`` is updated in place. A block that
    breaks down (``_rayleigh_ritz`` failed) is replaced by the full decomposition."""
    batch, m, _ = gram.shape
    groups = torch.unique(sizes).tolist()
    filters = torch.empty_like(gram) if len(groups) > 1 else None
    next_size = torch.empty(batch, dtype=torch.long, device=gram.device)
    for k in groups:
        # Each matrix's arithmetic depends on its own block size only, never on its group's
        # company: results do not change with the batch they are computed in.
        rows = (sizes == k).nonzero().flatten() if len(groups) > 1 else slice(None)
        gram_k = gram[rows]
        failed = None
        if k < m:
            ritz, vecs, failed = _rayleigh_ritz(gram_k, basis[rows, :, m - k :])
            if bool(failed.any()):  # the block broke down: exact for those matrices
                bad = failed.nonzero().flatten()
                values_bad, vectors_bad = small_eigh.eigh(gram_k[bad], near_diagonal=False)
                ritz[bad], vecs[bad] = values_bad[:, m - k :], vectors_bad[:, :, m - k :]
        else:
            ritz, vecs = small_eigh.eigh(gram_k, near_diagonal=False)
        filter_k, passed = small_eigh.soft_threshold_filter(ritz, vecs, threshold[rows])
        basis[rows, :, m - k :] = vecs
        if k < m:
            # Every Ritz value passed, or the block broke down: next time, the full decomposition.
            passed = torch.where((passed >= k) | failed, torch.full_like(passed, m), passed)
        next_size[rows] = (passed + MARGIN).clamp(max=m)
        if filters is None:
            filters = filter_k
        else:
            filters[rows] = filter_k
    return filters, next_size


def _rayleigh_ritz(gram: Tensor, block: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Ritz values (B, k) ascending, Ritz vectors (B, m, k), failed (B,) bool) of ``gram``
    (B, m, m) on span(gram @ block), block (B, m, k). failed: not finite, or (compiled path) the
    k x k eigh did not converge; the caller then uses the full decomposition."""
    if small_eigh.rayleigh_ritz_runs(gram, block):  # all of it in one compiled pass
        return small_eigh.rayleigh_ritz(gram, block)
    # Largest Ritz value first: QR then keeps each column near its vector of the previous step
    # (as in the QR algorithm), so the projected matrix is near diagonal form and the Jacobi
    # eigensolver needs 2-3 sweeps on it (5-6 in the ascending order).
    q, failed = _orthonormalise((gram @ block).flip(-1))
    if bool(failed.any()):  # any finite stand-in: the caller replaces these matrices' results
        q = torch.where(failed.view(-1, 1, 1), torch.eye(*q.shape[-2:], dtype=q.dtype, device=q.device), q)
    values, small = small_eigh.eigh(q.mT @ gram @ q, near_diagonal=True)
    return values, q @ small, failed


def _orthonormalise(y: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal basis of span(y) (B, m, k) by Householder QR (orthonormal also where y is
    close to rank-deficient: the power step makes the columns of small Ritz values nearly
    parallel to the others), and (B,) bool: True where it is not finite."""
    q = torch.linalg.qr(y).Q
    # A NaN or Inf anywhere in a matrix makes its sum non-finite (the entries of an orthonormal
    # q are at most 1, so a finite q cannot overflow it): one pass instead of an elementwise test.
    return q, ~torch.isfinite(q.sum((-2, -1)))
