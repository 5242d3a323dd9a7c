"""Checkpoints: atomic writes, weights-only loads, one-line errors for foreign or damaged files."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from menet.io_atomic import atomic_path


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, not ours, or from another architecture."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` via a temporary file and a rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_weights_only(path: str | Path) -> Any:
    """torch.load with ``weights_only=True`` (no code runs); errors are one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            # torch's own text goes on to advise weights_only=False: never for an untrusted file.
            raise CheckpointError(
                f"{path}: holds pickled objects beyond tensors and plain containers (code or classes), "
                "which menet refuses to load; menet's checkpoints are plain state dicts: use a file "
                "written by menet, or re-export the weights as a state dict where they came from"
            ) from None
        raise CheckpointError(f"{path}: not a readable menet checkpoint (truncated or foreign file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError):
        raise CheckpointError(f"{path}: not a readable menet checkpoint (truncated or foreign file)") from None


def _fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)


def load_state_into(model: nn.Module, state: Any, source: str, architecture: str,
                    candidates: Callable[[], dict[str, nn.Module]] | None = None) -> None:
    """Load ``state`` into ``model``; a mismatch is one line: the first differing keys and,
    where ``candidates()`` (name -> model) has one that fits, which architecture it is."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: expected a state dict of tensors")
    if _fits(model, state):
        model.load_state_dict(state)
        return
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{label}: {', '.join(keys[:3])}{more}")
    fitting = [name for name, other in (candidates() if candidates else {}).items() if _fits(other, state)]
    hint = f"; they fit {' / '.join(fitting)}" if fitting else ""
    raise CheckpointError(f"{source}: weights do not fit a {architecture}{hint} ({'; '.join(parts)})")
