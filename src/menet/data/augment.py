"""Batched augmentation and batching on uint8 image tensors (no per-image Python loop)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def to_float(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) in 0..255 -> float32 in [0, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.to(torch.float32) / 255.0


@dataclass(frozen=True)
class Augmentation:
    """Per-image augmentation draws: crop offsets in [0, 2 * padding] and flip flags, (N,) each.

    Drawn once for a batch (``draw_augmentation``) and applied to any tensor of its images
    (``apply``), uint8 or float: multi-process training draws for the global batch and each
    rank applies its rows; ME-Net applies them after reconstruction.
    """

    padding: int
    dy: Tensor
    dx: Tensor
    flip: Tensor | None  # bool (N,), or None when flipping is off

    def rows(self, index: slice | Tensor) -> Augmentation:
        """The draws of the images ``index`` selects."""
        return Augmentation(self.padding, self.dy[index], self.dx[index], None if self.flip is None else self.flip[index])

    def apply(self, images: Tensor) -> Tensor:
        """Crop (zero padding) and flip ``images`` (N, C, H, W) as drawn; shape and dtype kept."""
        if len(images) != len(self.dy):
            raise ValueError(f"{len(self.dy)} augmentation draws for {len(images)} images")
        out = images
        if self.padding > 0:
            n, c, h, w = images.shape
            p, device = self.padding, images.device
            padded = F.pad(images, (p, p, p, p))
            dy, dx = self.dy.to(device), self.dx.to(device)
            rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None].expand(n, c, h, w + 2 * p)
            cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :].expand(n, c, h, w)
            out = padded.gather(2, rows).gather(3, cols)
        if self.flip is not None:
            out = torch.where(self.flip.to(images.device)[:, None, None, None], out.flip(-1), out)
        return out


def draw_augmentation(n: int, *, crop_padding: int = 0, flip: bool = False,
                      generator: torch.Generator | None = None) -> Augmentation:
    """Draw crop offsets (if ``crop_padding``) then flip flags (if ``flip``) for ``n`` images."""
    if crop_padding > 0:
        dy = torch.randint(0, 2 * crop_padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * crop_padding + 1, (n,), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.int64)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else None
    return Augmentation(crop_padding, dy, dx, flips)


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``padding`` and crop back to (H, W) at a random offset per image."""
    return draw_augmentation(len(images), crop_padding=padding, generator=generator).apply(images)


def random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    return draw_augmentation(len(images), flip=True, generator=generator).apply(images)


def augment(images: Tensor, *, crop_padding: int = 0, flip: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Random crop with padding and/or horizontal flip, batched; shape and dtype kept."""
    return draw_augmentation(len(images), crop_padding=crop_padding, flip=flip, generator=generator).apply(images)


def iterate_batches(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images, labels) batches; a seeded ``generator`` makes the shuffle reproducible."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    n = images.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]
