"""menet: ME-Net (Yang, Zhang, Katabi and Xu, ICML 2019) in PyTorch.

The main entry points are available here: the defense (``MatrixEstimation``, ``MENet``),
training (``fit``), ``load_model`` to rebuild a trained, defended model from its run folder,
and ``evaluate`` to attack it. They are imported on first use, so that ``import
menet.estimation`` (or ``menet.defense``) loads neither training, YAML nor matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "MatrixEstimation": "menet.defense",
    "MENet": "menet.defense",
    "fit": "menet.training",
    "load_model": "menet.runs",
    "evaluate": "menet.evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'menet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
