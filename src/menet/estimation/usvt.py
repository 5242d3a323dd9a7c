"""Universal singular value thresholding (Chatterjee, 2015), batched."""

from __future__ import annotations

import torch
from torch import Tensor

from menet.estimation._batching import (
    check_matrices,
    check_positive,
    map_matrices,
    zero_fill,
)
from menet.estimation.spectral import spectral_filter


def _resolve_rank(rank: int | float | None, m: int, n: int) -> int | None:
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise TypeError(f"rank must be None, an int or a float in (0, 1], got {rank!r}")
    if isinstance(rank, float):
        if not 0.0 < rank <= 1.0:
            raise ValueError(f"a float rank is a fraction of m and must lie in (0, 1], got {rank}")
        k = int(rank * m)
        if k < 1:
            raise ValueError(f"rank fraction {rank} of m={m} keeps no singular value")
        return min(k, m, n)
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"an int rank must lie in [1, min(m, n)] = [1, {min(m, n)}], got {rank}")
    return rank


def usvt(
    a: Tensor,
    mask: Tensor,
    *,
    rank: int | float | None = None,
    eta: float = 0.01,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> Tensor:
    """Universal singular value thresholding (Chatterjee, 2015) on the zero-filled matrix.

    a: float32/float64 (..., m, n) on any device; mask: bool, same shape, True = observed.
    Unobserved entries of ``a`` are ignored. With p_hat the observed fraction of each matrix,
    the singular values of the zero-filled matrix that are >= (2 + eta) * sqrt(max(m, n) * p_hat)
    are kept (or the top ``rank`` ones: an int k, or a float in (0, 1] meaning int(rank * m)),
    the result is rescaled by 1 / p_hat and clipped to ``clip`` (None: no clipping).
    Differentiable with respect to ``a`` (unstable where kept and dropped singular values are
    close). Returns a tensor like ``a``.
    """
    check_matrices(a, mask)
    check_positive("eta", eta, allow_zero=True)
    if clip is not None and not (len(clip) == 2 and clip[0] < clip[1]):
        raise ValueError(f"clip must be None or (low, high) with low < high, got {clip!r}")
    m, n = a.shape[-2:]
    k = _resolve_rank(rank, m, n)

    def estimate(a_chunk: Tensor, mask_chunk: Tensor) -> Tensor:
        p_hat = mask_chunk.flatten(-2).sum(-1).to(a_chunk.dtype) / (m * n)  # (B,)
        if k is None:
            threshold = (2.0 + eta) * torch.sqrt(max(m, n) * p_hat)

            def weight(s: Tensor) -> Tensor:
                return (s.detach() >= threshold.unsqueeze(-1)).to(s.dtype)
        else:

            def weight(s: Tensor) -> Tensor:
                # eigh returns ascending order: keep the last k.
                w = torch.zeros_like(s)
                w[..., -k:] = 1.0
                return w

        low_rank, _ = spectral_filter(zero_fill(a_chunk, mask_chunk), weight)
        out = low_rank / p_hat.view(-1, 1, 1)
        return out if clip is None else out.clamp(clip[0], clip[1])

    return map_matrices(estimate, a, mask, differentiable=True)
