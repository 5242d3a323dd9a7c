"""Your own network: ``"package.module:factory"`` names an importable callable returning an nn.Module.

Wherever a registered model name goes (a config's ``model``, ``--set model=...``, a recipe,
``menet import-run --model``), such a path may go instead. The factory is called with the
config's ``model_options`` as keyword arguments and must return an ``nn.Module`` that maps
images (N, C, H, W) in [0, 1] to logits (N, classes) (normalisation inside, as menet's own
models do); ``features(x)`` (penultimate features, for Figs. 4 and 5) is optional. Importing
runs the module's code: a run whose config names a factory runs that code when loaded.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def is_factory_path(name: object) -> bool:
    """Whether ``name`` has the form ``package.module:factory`` (not a registered model name)."""
    return isinstance(name, str) and ":" in name


def import_factory(path: str) -> Callable[..., Any]:
    """The callable named by ``package.module:factory``; ValueError (one line) when it is
    malformed, not importable or not callable. The current directory is searched too (as
    ``python -m`` would), so a ``mynet.py`` beside the command is found."""
    if not _PATH.fullmatch(path):
        raise ValueError(f"model {path!r}: expected a registered name or package.module:factory")
    module_name, attribute = path.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model {path}: cannot import {module_name} ({err}); is it on PYTHONPATH "
                         "or in the current directory?") from None
    except Exception as err:  # the user's module raised while importing: say so in one line
        raise ValueError(f"model {path}: importing {module_name} failed: {type(err).__name__}: {err}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model {path}: {module_name} has no attribute {attribute}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model {path}: {attribute} is a {type(target).__name__}, not a callable returning an nn.Module")
    return target


def build_custom(path: str, **options: Any) -> nn.Module:
    """Call the factory ``path`` with ``options``; ValueError (one line) unless it returns an nn.Module."""
    factory = import_factory(path)
    try:
        model = factory(**options)
    except TypeError as err:
        raise ValueError(f"model {path}: calling it with model_options {options} failed: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {path}: returned a {type(model).__name__}, expected a torch.nn.Module")
    return model


def check_output(model: nn.Module, name: str, image_shape: tuple[int, int, int], num_classes: int) -> None:
    """Run ``model`` on two blank images of ``image_shape`` (C, H, W), on the model's device;
    ValueError (one line) unless it returns logits of shape (2, num_classes). Leaves the model's mode as it was."""
    device = next(iter(model.parameters()), torch.empty(0)).device  # import-run --device cuda checks it there
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *image_shape, device=device))
    except Exception as err:
        raise ValueError(f"model {name} fails on a (2, {', '.join(map(str, image_shape))}) batch of [0, 1] images: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model {name} maps a (2, {', '.join(map(str, image_shape))}) batch to {got}; "
                         f"expected logits of shape (2, {num_classes}) for this dataset's {num_classes} classes")
