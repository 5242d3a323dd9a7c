"""What every menet classifier shares: normalisation inside, penultimate features exposed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer, so attacks see [0, 1] images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Classifier(nn.Module):
    """normalize -> body (images to penultimate features) -> head (features to logits).

    ``features(x)`` returns the (N, D) vectors right before the last linear layer (for t-SNE
    and distance figures); ``forward(x)`` returns logits (N, classes). Inputs are in [0, 1].
    """

    def __init__(self, normalize: Normalize, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, D) of images (N, C, H, W) in [0, 1]."""
        return self.body(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, classes) of images (N, C, H, W) in [0, 1]."""
        return self.head(self.features(x))
