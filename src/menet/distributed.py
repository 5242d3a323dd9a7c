"""This process's place in a run under torchrun (or alone): rank, world size, device, and the
one reduction the training loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> Distributed:
    """Join the torchrun process group if WORLD_SIZE > 1; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            # Long timeout: rank 0 may build the cached reconstructions while the others wait.
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=3))
        chosen = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(chosen)
        return Distributed(dist.get_rank(), world, chosen)
    chosen = torch.device(device) if device else torch.device("cuda" if cuda else "cpu")
    return Distributed(0, 1, chosen)


def sum_over_ranks(values: torch.Tensor, place: Distributed) -> torch.Tensor:
    """Sum a small CPU tensor over the ranks (NCCL reduces only GPU tensors: move it there)."""
    if place.world == 1:
        return values
    on_device = values.to(place.device)
    dist.all_reduce(on_device)
    return on_device.cpu()
