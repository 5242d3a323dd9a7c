"""DenseNet-121 (Huang et al., 2017) with the ImageNet stem, for 64 x 64 Tiny-ImageNet."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from menet.models.base import Classifier, Normalize
from menet.models.registry import register_model


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (bottleneck) then BN-ReLU-conv3x3; output concatenated to the input."""

    def __init__(self, in_features: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm2d(in_features), nn.ReLU(), nn.Conv2d(in_features, bottleneck * growth, 1, bias=False),
            nn.BatchNorm2d(bottleneck * growth), nn.ReLU(), nn.Conv2d(bottleneck * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.block(x)], 1)


def transition(in_features: int, out_features: int) -> nn.Sequential:
    """BN-ReLU-conv1x1 compression, then 2 x 2 average pooling."""
    return nn.Sequential(
        nn.BatchNorm2d(in_features), nn.ReLU(), nn.Conv2d(in_features, out_features, 1, bias=False), nn.AvgPool2d(2)
    )


@register_model("densenet121")
def densenet121(
    num_classes: int = 200, in_channels: int = 3, normalize: Normalize | None = None
) -> Classifier:
    """Growth 32, blocks (6, 12, 24, 16), 64 stem features, bottleneck 4, compression 0.5.

    7,158,856 parameters with 200 classes (the 1000-class ImageNet DenseNet-121 minus its
    head, 6,953,856, plus a 1024 x 200 head).
    """
    growth, bottleneck = 32, 4
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
    ]
    features = 64
    for i, count in enumerate((6, 12, 24, 16)):
        for _ in range(count):
            layers.append(DenseLayer(features, growth, bottleneck))
            features += growth
        if i < 3:
            layers.append(transition(features, features // 2))
            features //= 2
    layers += [nn.BatchNorm2d(features), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    norm = normalize or Normalize([0.0] * in_channels, [1.0] * in_channels)
    return Classifier(norm, nn.Sequential(*layers), features, num_classes)
