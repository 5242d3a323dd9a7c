"""Clean accuracy of a (defended) model on a held-out image set."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from menet.data import to_float
from menet.progress import Progress, no_progress


@torch.no_grad()
def count_correct(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: bool = False,
    progress: Progress = no_progress,
) -> int:
    """How many of ``images`` (uint8 (N, C, H, W)) ``model`` classifies as ``labels`` (N,).

    Batched; the model's train/eval mode is left as it is (call ``model.eval()`` first).
    A defended model draws its masks from its preprocess's generator.
    """
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} and {len(labels)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    correct = 0
    starts = range(0, len(images), batch_size)
    for start in progress(starts, desc="test", total=len(starts)):
        x = to_float(images[start : start + batch_size]).to(device)
        y = labels[start : start + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            correct += int((model(x).argmax(1) == y).sum())
    return correct
