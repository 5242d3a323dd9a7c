"""Soft-Impute (Mazumder, Hastie and Tibshirani, 2010), batched, fancyimpute's defaults."""

from __future__ import annotations

import torch
from torch import Tensor

from menet.estimation._batching import (
    check_matrices,
    check_max_iters,
    check_positive,
    map_matrices,
    zero_fill,
)
from menet.estimation.spectral import (
    singular_values,
    soft_threshold_weights,
    spectral_filter,
)

# fancyimpute's guard for a vanishing norm of the old unobserved values.
_F32_EPS = float(torch.finfo(torch.float32).eps)


def soft_impute(
    a: Tensor,
    mask: Tensor,
    *,
    shrinkage: float | None = None,
    max_iters: int = 100,
    tol: float = 1e-3,
) -> Tensor:
    """Soft-Impute with the defaults of the fancyimpute implementation used by ME-Net's code.

    a: float32/float64 (..., m, n); mask: bool, same shape, True = observed. Starting from the
    zero-filled matrix, each iteration soft-thresholds the singular values of the current
    filled matrix by ``shrinkage`` (default: largest singular value of the zero-filled matrix
    / 50, per matrix) and replaces only the unobserved entries. A matrix stops when the
    relative change of its unobserved entries (||new - old|| / ||old||) is below ``tol``, or
    after ``max_iters`` iterations. Observed entries are returned as given. Not
    differentiable: the output carries no gradient. Returns a tensor like ``a``.
    """
    check_matrices(a, mask)
    if shrinkage is not None:
        check_positive("shrinkage", shrinkage, allow_zero=True)
    check_max_iters(max_iters)
    check_positive("tol", tol)

    def estimate(a_chunk: Tensor, mask_chunk: Tensor) -> Tensor:
        observed = zero_fill(a_chunk, mask_chunk)
        if shrinkage is None:
            tau = singular_values(observed)[..., -1:] / 50.0  # (B, 1)
        else:
            tau = torch.full((observed.shape[0], 1), shrinkage, dtype=a_chunk.dtype, device=a_chunk.device)
        out = observed.clone()
        # A fully observed matrix has nothing to impute (fancyimpute would spin to max_iters).
        active = (~mask_chunk).flatten(-2).any(-1).nonzero().squeeze(-1)
        # The filled matrix is observed + imputed, imputed being zero on observed entries;
        # float masks and products are much faster than torch.where on CPU.
        b, miss, tau_a = observed[active], (~mask_chunk[active]).to(a_chunk.dtype), tau[active]
        imputed = torch.zeros_like(b)
        for _ in range(max_iters):
            if active.numel() == 0:
                break
            recon, _ = spectral_filter(b + imputed, lambda s: soft_threshold_weights(s, tau_a))
            new_imputed = miss * recon
            change = torch.linalg.vector_norm(new_imputed - imputed, dim=(-2, -1))
            old_norm = torch.linalg.vector_norm(imputed, dim=(-2, -1))
            converged = (old_norm > 0) & ~((old_norm < _F32_EPS) & (change > _F32_EPS))
            converged &= change < tol * old_norm
            imputed = new_imputed
            if bool(converged.any()):
                out[active[converged]] = b[converged] + imputed[converged]
                keep = ~converged
                active, b, miss, tau_a, imputed = (
                    active[keep], b[keep], miss[keep], tau_a[keep], imputed[keep]
                )
        out[active] = b + imputed
        return out

    with torch.no_grad():
        return map_matrices(estimate, a.detach(), mask)
