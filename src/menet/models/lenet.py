"""The MNIST network of Madry et al. (2018): two 5x5 convolutions, two fully connected layers."""

from __future__ import annotations

from torch import nn

from menet.models.base import Classifier, Normalize
from menet.models.registry import register_model


@register_model("lenet")
def lenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, normalize: Normalize | None = None) -> Classifier:
    """conv 5x5x32 (same), max-pool 2, conv 5x5x64 (same), max-pool 2, fc 1024, fc classes."""
    if image_size % 4:
        raise ValueError(f"lenet needs an image size divisible by 4, got {image_size}")
    side = image_size // 4
    body = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * side * side, 1024), nn.ReLU(),
    )
    return Classifier(normalize or Normalize([0.0] * in_channels, [1.0] * in_channels), body, 1024, num_classes)
