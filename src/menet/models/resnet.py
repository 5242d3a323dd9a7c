"""ResNet-18 in its CIFAR form (He et al., 2016): 3x3 stem, BasicBlocks [2, 2, 2, 2]."""

from __future__ import annotations

from torch import Tensor, nn

from menet.models.base import Classifier, Normalize
from menet.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


def resnet_body(blocks: list[int], in_channels: int) -> nn.Sequential:
    """3x3 stem and four stages of BasicBlocks (64, 128, 256, 512 planes), pooled to (N, 512)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    in_planes = 64
    for i, count in enumerate(blocks):
        planes = 64 * 2**i
        for j in range(count):
            layers.append(BasicBlock(in_planes, planes, 2 if (j == 0 and i > 0) else 1))
            in_planes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, normalize: Normalize | None = None) -> Classifier:
    """CIFAR ResNet-18: 11,173,962 parameters for 3 channels and 10 classes."""
    body = resnet_body([2, 2, 2, 2], in_channels)
    return Classifier(normalize or Normalize([0.0] * in_channels, [1.0] * in_channels), body, 512, num_classes)
