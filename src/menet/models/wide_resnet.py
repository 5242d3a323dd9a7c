"""Wide residual networks (Zagoruyko and Komodakis, 2016), pre-activation blocks."""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from menet.models.base import Classifier, Normalize
from menet.models.registry import register_model


class WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3, (dropout), BN-ReLU-conv3x3, plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.equal = in_planes == planes and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.bn1(x).relu()
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.bn2(out).relu()))
        return out + (x if self.shortcut is None else self.shortcut(pre))


@register_model("wide_resnet")
def wide_resnet(
    num_classes: int = 10, in_channels: int = 3, depth: int = 28, widen_factor: int = 10,
    dropout: float = 0.0, normalize: Normalize | None = None,
) -> Classifier:
    """WRN-depth-widen_factor; depth = 6n + 4. WRN-28-10 has 36,479,194 parameters."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"wide_resnet depth must be 6n + 4 with n >= 1, got {depth}")
    n = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
    in_planes = widths[0]
    for stage, planes in enumerate(widths[1:]):
        for j in range(n):
            layers.append(WideBlock(in_planes, planes, 2 if (j == 0 and stage > 0) else 1, dropout))
            in_planes = planes
    layers += [nn.BatchNorm2d(in_planes), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    norm = normalize or Normalize([0.0] * in_channels, [1.0] * in_channels)
    return Classifier(norm, nn.Sequential(*layers), in_planes, num_classes)


register_model("wrn28_10")(partial(wide_resnet, depth=28, widen_factor=10))
register_model("wrn34_10")(partial(wide_resnet, depth=34, widen_factor=10))
