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


def _resolve_rank(rank: int | None, rank_fraction: float | None, m: int, n: int) -> int | None:
    """How many singular values to keep: ``rank``, int(rank_fraction * min(m, n)), or None
    (Chatterjee's threshold). Each parameter has one meaning: a float rank is refused."""
    if rank is not None and rank_fraction is not None:
        raise ValueError(f"give rank (a count) or rank_fraction (a fraction), not both: got {rank!r} and {rank_fraction!r}")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int):
            hint = f"; for a fraction of the singular values use rank_fraction={rank!r}" if isinstance(rank, float) else ""
            raise TypeError(f"rank must be an int count of singular values, got {rank!r}{hint}")
        if not 1 <= rank <= min(m, n):
            raise ValueError(f"rank must lie in [1, min(m, n)] = [1, {min(m, n)}], got {rank}")
        return rank
    if rank_fraction is not None:
        if isinstance(rank_fraction, bool) or not isinstance(rank_fraction, (int, float)):
            raise TypeError(f"rank_fraction must be a number in (0, 1], got {rank_fraction!r}")
        if not 0.0 < rank_fraction <= 1.0:
            raise ValueError(f"rank_fraction is a fraction of min(m, n) and must lie in (0, 1], got {rank_fraction}")
        k = int(rank_fraction * min(m, n))
        if k < 1:
            raise ValueError(f"rank_fraction {rank_fraction} of min(m, n) = {min(m, n)} keeps no singular value")
        return k
    return None


def usvt_rule(rank: int | None = None, rank_fraction: float | None = None, eta: float = 0.01, **_: object) -> str:
    """The USVT rule these options select, in words (for reprs and run files)."""
    if rank is not None:
        return f"top {rank} singular values"
    if rank_fraction is not None:
        original = " (the original ME-Net code's svdprob)" if rank_fraction == 0.8 else ""
        return f"top {rank_fraction:.0%} of singular values{original}"
    return f"Chatterjee's threshold (2 + eta) sqrt(max(m, n) p_hat), eta={eta:g}"


def usvt(
    a: Tensor,
    mask: Tensor,
    *,
    rank: int | None = None,
    rank_fraction: float | None = None,
    eta: float = 0.01,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> Tensor:
    """Universal singular value thresholding (Chatterjee, 2015) on the zero-filled matrix.

    a: float32/float64 (..., m, n) on any device; mask: bool, same shape, True = observed.
    Unobserved entries of ``a`` are ignored. With p_hat the observed fraction of each matrix,
    the singular values of the zero-filled matrix that are >= (2 + eta) * sqrt(max(m, n) * p_hat)
    are kept (Chatterjee's rule, when neither ``rank`` nor ``rank_fraction`` is given), or the
    top ``rank`` ones (an int count), or the top int(rank_fraction * min(m, n)) ones (a
    fraction in (0, 1]; the original ME-Net code used 0.8); the result is rescaled by 1 / p_hat and clipped to ``clip`` (None: no clipping).
    Differentiable with respect to ``a`` (unstable where kept and dropped singular values are
    close). Returns a tensor like ``a``.
    """
    check_matrices(a, mask)
    check_positive("eta", eta, allow_zero=True)
    if clip is not None and not (len(clip) == 2 and clip[0] < clip[1]):
        raise ValueError(f"clip must be None or (low, high) with low < high, got {clip!r}")
    m, n = a.shape[-2:]
    k = _resolve_rank(rank, rank_fraction, m, n)

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
