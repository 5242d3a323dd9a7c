"""Checkpoints: atomic writes, weights-only loads, clear errors for foreign or damaged files."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from menet.io import atomic_path


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, not ours, or from another architecture."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` via a temporary file and a rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_weights_only(path: str | Path) -> Any:
    """torch.load with ``weights_only=True`` (no code runs); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable menet checkpoint (truncated or foreign file: {err})") from None


def load_state_into(model: nn.Module, state: Any, source: str, architecture: str) -> None:
    """Load ``state`` into ``model``, explaining a mismatch in terms of the architecture."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: expected a state dict of tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1:3]
        raise CheckpointError(
            f"{source}: weights do not fit a {architecture} (checkpoint from another architecture?): "
            + " ".join(line.strip() for line in first)
        ) from None
