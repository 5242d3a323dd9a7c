"""Image statistics from the paper: approximate rank (Fig. 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from menet.estimation.layout import images_to_matrices
from menet.estimation.spectral import singular_values


def approx_rank(images: Tensor, energy: float = 0.9, layout: str = "concat") -> Tensor:
    """Smallest number of singular values holding ``energy`` of each image's spectral energy.

    Energy is the sum of squared singular values (the squared Frobenius norm). images:
    (N, C, H, W), any range. Returns int64 ranks: (N,) for "concat" (one H x C*W matrix
    per image), (N, C) for "separate". An all-zero matrix has rank 0.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must lie in (0, 1], got {energy}")
    matrices = images_to_matrices(images.to(torch.float64), layout)
    power = singular_values(matrices).flip(-1).square()  # descending
    total = power.sum(-1, keepdim=True)
    cumulative = power.cumsum(-1)
    # Relative slack absorbs rounding when the energy is reached exactly (e.g. energy=1).
    reached = cumulative >= energy * total * (1 - 1e-12)
    ranks = reached.to(torch.int64).argmax(-1) + 1
    return torch.where(total.squeeze(-1) > 0, ranks, torch.zeros_like(ranks))
