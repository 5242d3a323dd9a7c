"""Spectral filtering of batched matrices through the eigendecomposition of the Gram matrix.

For x = U diag(s) V^T, ``spectral_filter(x, w)`` returns U diag(w(s)) U^T x, i.e. the matrix
whose singular values s are replaced by w(s) * s with the same singular vectors. Using eigh
on the small (min(m, n))^2 Gram matrix is several times faster than a batched SVD on CPU
and gives the same result for every filter that is zero or smooth where singular values are
tiny (thresholding, shrinkage): those are exactly the ones ME needs.

Gradients. torch's eigh backward divides by every difference of eigenvalues, so it gives
NaN or huge values wherever singular values repeat (a constant image, identical rows, zero
padding), even though the filtered matrix does not depend on how a repeated eigenvalue's
eigenvectors are chosen. When x requires a gradient, the filter matrix
M = U diag(f(lambda)) U^T of the Gram matrix G = U diag(lambda) U^T (f(lambda) = w(sqrt(lambda)))
is therefore differentiated as a whole, by the Daleckii-Krein formula

    dM = U (F o (U^T dG U)) U^T,   F_ij = (f_i - f_j) / (lambda_i - lambda_j),   F_ii = f'(lambda_i),

where ``o`` is the entrywise product. For a 0/1 filter (USVT keeps the top k, or those above
a threshold) F_ij is 0 when i and j are both kept or both dropped, so repeated values inside
either group cost nothing; only kept-dropped pairs contribute 1 / (lambda_i - lambda_j).
Eigenvalues closer than eigh can resolve (``_tie_tolerance``) count as equal and get the mean
slope (f'_i + f'_j) / 2: for a 0/1 filter that is 0, also for a kept and a dropped eigenvalue
that coincide (e.g. zero singular values on both sides of the cut when k exceeds the rank),
where M has no derivative at all; that pair then contributes nothing (a finite, documented
choice rather than NaN). The forward values are computed exactly as without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

Weight = Callable[[Tensor], Tensor]


def singular_values(x: Tensor) -> Tensor:
    """Singular values of x (..., m, n), ascending, shape (..., min(m, n))."""
    small = x if x.shape[-2] <= x.shape[-1] else x.mT
    return torch.linalg.eigvalsh(small @ small.mT).clamp_min(0).sqrt()


def spectral_filter(x: Tensor, weight: Weight) -> tuple[Tensor, Tensor]:
    """Return (U diag(w) U^T x, s) for x (B, m, n), s its singular values (B, k) ascending.

    ``weight`` maps s (B, k) to per-singular-value factors w (B, k); for gradients it must
    act entrywise (w_i depends on s_i only, or on nothing, like a top-k mask), and tensors
    it captures get no gradient. Gradients flow to ``x`` (and through ``s``), finite also
    where singular values repeat: see the module docstring.
    """
    transpose = x.shape[-2] > x.shape[-1]
    small = x.mT if transpose else x
    gram = small @ small.mT
    if torch.is_grad_enabled() and gram.requires_grad:
        evals, filter_matrix = _GramFilter.apply(gram, weight, small.shape[-1])
        s = evals.clamp_min(0).sqrt()
    else:
        _, filter_matrix, s, _, _ = _gram_filter(gram, weight)
    filtered = filter_matrix @ small
    return (filtered.mT if transpose else filtered), s


def soft_threshold_weights(s: Tensor, tau: Tensor) -> Tensor:
    """w(s) = max(s - tau, 0) / s (0 where s <= tau); tau broadcasts against s (B, k)."""
    keep = s > tau
    return torch.where(keep, (s - tau) / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))


def _gram_filter(gram: Tensor, weight: Weight) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(lambda, M, s, U, f) for a symmetric gram (B, k, k): G = U diag(lambda) U^T (ascending),
    s = sqrt(max(lambda, 0)), f = weight(s) (B, k), and M = U diag(f) U^T (B, k, k)."""
    evals, evecs = torch.linalg.eigh(gram)
    s = evals.clamp_min(0).sqrt()
    w = weight(s)
    return evals, (evecs * w.unsqueeze(-2)) @ evecs.mT, s, evecs, w


def _tie_tolerance(evals: Tensor, inner: int) -> Tensor:
    """(B, 1, 1): eigenvalues of one Gram matrix closer than 4 (k + inner) eps max|lambda| are tied.

    Forming G = x x^T (``inner`` products per entry) and eigh each err by a small multiple of
    eps ||G||, so smaller differences are rounding noise, e.g. the 'zero' eigenvalues of a
    rank-deficient x, measured at up to 1.1 (k + inner) eps max|lambda| (3 x 3 float64).
    """
    scale = evals.abs().amax(-1, keepdim=True).unsqueeze(-1)
    return scale * (4 * (evals.shape[-1] + inner) * torch.finfo(evals.dtype).eps)


def _weight_slope(evals: Tensor, weight: Weight) -> Tensor:
    """f'(lambda) (B, k) for f(lambda) = weight(sqrt(max(lambda, 0))); 0 where lambda <= 0 or
    where ``weight`` does not depend on s (a mask computed from detached values)."""
    with torch.enable_grad():
        s = evals.detach().clamp_min(0).sqrt().requires_grad_(True)
        w = weight(s)
        if not w.requires_grad:
            return torch.zeros_like(evals)
        (dw_ds,) = torch.autograd.grad(w.sum(), s, allow_unused=True)
    if dw_ds is None:
        return torch.zeros_like(evals)
    positive = s.detach() > 0
    # d sqrt(lambda) / d lambda = 1 / (2 s); undefined at s = 0, where the slope is taken as 0.
    return torch.where(positive, dw_ds / (2 * torch.where(positive, s.detach(), 1.0)), 0.0)


def _divided_differences(evals: Tensor, f: Tensor, slope: Tensor, inner: int) -> Tensor:
    """F (B, k, k): (f_i - f_j) / (lambda_i - lambda_j), or (f'_i + f'_j) / 2 where the two
    eigenvalues are tied (always on the diagonal)."""
    gap = evals.unsqueeze(-1) - evals.unsqueeze(-2)
    apart = gap.abs() > _tie_tolerance(evals, inner)
    rise = f.unsqueeze(-1) - f.unsqueeze(-2)
    mean_slope = (slope.unsqueeze(-1) + slope.unsqueeze(-2)) / 2
    return torch.where(apart, rise / torch.where(apart, gap, 1.0), mean_slope)


class _GramFilter(torch.autograd.Function):
    """(lambda, M) = eigenvalues of a symmetric gram (B, k, k) = x x^T (``inner`` = x's long
    side) and M = U diag(f(lambda)) U^T, with the backward of the module docstring."""

    @staticmethod
    def forward(ctx: FunctionCtx, gram: Tensor, weight: Weight, inner: int) -> tuple[Tensor, Tensor]:
        evals, filter_matrix, _, evecs, w = _gram_filter(gram, weight)
        ctx.save_for_backward(evals, evecs, w)
        ctx.weight, ctx.inner = weight, inner  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        return evals, filter_matrix

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_evals: Tensor | None, grad_matrix: Tensor | None) -> tuple[Tensor, None, None]:
        evals, evecs, w = ctx.saved_tensors
        in_eigenbasis = torch.zeros_like(evecs)  # U^T (dL/dG) U
        if grad_matrix is not None:
            rotated = evecs.mT @ ((grad_matrix + grad_matrix.mT) / 2) @ evecs
            slope = _weight_slope(evals, ctx.weight)
            in_eigenbasis = in_eigenbasis + _divided_differences(evals, w, slope, ctx.inner) * rotated
        if grad_evals is not None:
            in_eigenbasis = in_eigenbasis + torch.diag_embed(grad_evals)
        return evecs @ in_eigenbasis @ evecs.mT, None, None
