"""Which torch devices this machine has, and a one-line error for one it lacks.

Every command checks its ``--device`` here before any work, so ``--device cuda`` on a CPU-only
torch, ``cuda:3`` on a one-GPU machine or a typo ends in one line naming the device and what is
available, not in a traceback from deep inside training or an attack.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device does not exist on this machine (or is not a device name)."""


def available_devices() -> list[str]:
    """The devices torch can use here, e.g. ``["cpu", "cuda", "cuda:0", "cuda:1"]``."""
    names = ["cpu"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count:
        names += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(device: str | None) -> None:
    """Raise DeviceError (one line: the device, why, what is available) unless ``device`` is
    None (the default choice: CUDA when available) or a device this machine has."""
    if device is None:
        return
    available = available_devices()
    listed = ", ".join(available)
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"--device {device!r} is not a device name; available here: {listed}") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"--device {device} is not available: {why} (torch {torch.__version__}); available here: {listed}")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(f"--device {device} is not available: this machine has {count} CUDA GPU(s); "
                              f"available here: {listed}")
        return
    if str(parsed) in available or parsed.type in available:
        return
    raise DeviceError(f"--device {device} is not available here; available: {listed}")
