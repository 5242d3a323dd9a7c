"""Random keep-masks: each entry is observed (True) with probability p."""

from __future__ import annotations

import torch
from torch import Tensor


def check_probability(p: float | Tensor, name: str = "p") -> None:
    """Raise ValueError unless every keep-probability lies in (0, 1]."""
    values = p if isinstance(p, Tensor) else torch.tensor(float(p))
    if not values.is_floating_point():
        raise TypeError(f"{name} must be a float or a float tensor, got {values.dtype}")
    if not bool(((values > 0) & (values <= 1)).all()):
        raise ValueError(f"{name} must lie in (0, 1], got {p}")


def random_mask(
    shape: tuple[int, ...],
    p: float | Tensor,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bernoulli(p) keep-mask of ``shape`` (True = observed).

    ``p`` is a float or a per-sample tensor of shape (N,), N = shape[0], each in (0, 1].
    Reproducible under a seeded ``generator`` (its device must be ``device``; the default
    device is the generator's, else CPU).
    """
    if isinstance(p, bool) or not isinstance(p, (float, int, Tensor)):
        raise TypeError(f"p must be a float or a tensor, got {type(p).__name__}")
    check_probability(p)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    uniform = torch.rand(shape, generator=generator, device=device)
    if isinstance(p, Tensor):
        if p.dim() != 1 or p.shape[0] != shape[0]:
            raise ValueError(f"a tensor p must have shape ({shape[0]},), got {tuple(p.shape)}")
        p = p.to(device=device, dtype=uniform.dtype).view(-1, *([1] * (len(shape) - 1)))
    return uniform < p
