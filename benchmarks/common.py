"""Shared by the benchmark scripts: timing and CIFAR-shaped data built from Fashion-MNIST."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def synchronize() -> None:
    """Wait for queued GPU work (no-op on CPU), so that timings include it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn``."""
    return interleaved_median_times([fn], repeats)[0]


def interleaved_median_times(fns: list[Callable[[], object]], repeats: int = 3) -> list[float]:
    """Median wall-clock seconds of each of ``fns``, called in turn ``repeats`` times (A B A B ...),
    so that a machine whose speed drifts during the run biases none of them."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def cifar_like(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> uint8 (N, 3, 32, 32): padded, channels from shifted, scaled copies
    (CIFAR-10 is not shipped with menet)."""
    padded = F.pad(images, (2, 2, 2, 2))
    return torch.cat([padded, (padded.float() * 0.9).roll(1, 2).to(torch.uint8),
                      (padded.float() * 0.8).roll(1, 3).to(torch.uint8)], dim=1)
