"""The in-memory form every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 (N, C, H, W) and int64 labels (N,)."""

    images: Tensor
    labels: Tensor
