"""One registry of model constructors: ``register_model`` adds, ``build_model`` builds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from menet.models.base import Normalize
from menet.models.custom import build_custom, check_output, is_factory_path

_CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a constructor ``f(num_classes, in_channels, normalize, **kw)``."""

    def add(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _CONSTRUCTORS:
            raise ValueError(f"model {name!r} is already registered")
        _CONSTRUCTORS[name] = constructor
        return constructor

    return add


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_CONSTRUCTORS)


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: int | float,
) -> nn.Module:
    """Build the registered model ``name``; inputs in [0, 1], normalised by (mean, std) inside.

    ``mean``/``std`` default to no normalisation. Extra keyword arguments go to the
    constructor (e.g. ``depth``, ``widen_factor`` for ``wide_resnet``; ``image_size`` for lenet).
    """
    if name not in _CONSTRUCTORS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
    mean = [0.0] * in_channels if mean is None else list(mean)
    std = [1.0] * in_channels if std is None else list(std)
    if len(mean) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values (one per channel), got {len(mean)}")
    return _CONSTRUCTORS[name](
        num_classes=num_classes, in_channels=in_channels, normalize=Normalize(mean, std), **kwargs
    )


def build_model_for_dataset(name: str, dataset: str, **kwargs: int | float) -> nn.Module:
    """Build model ``name`` with the classes, channels and normalisation of ``dataset``.

    ``name`` may also be ``package.module:factory`` (see ``menet.models.custom``): the factory
    is called with ``kwargs`` and its model checked on two blank images of the dataset's shape.
    """
    from menet.data.registry import get_dataset_spec

    spec = get_dataset_spec(dataset)
    if is_factory_path(name):
        model = build_custom(name, **kwargs)
        check_output(model, name, spec.image_shape, spec.num_classes)
        return model
    if name == "lenet":
        kwargs.setdefault("image_size", spec.image_shape[1])
    return build_model(name, spec.num_classes, spec.image_shape[0], spec.mean, spec.std, **kwargs)
