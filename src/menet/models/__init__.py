"""The paper's networks behind one registry; every model normalises inside and exposes features."""

from menet.models import densenet, lenet, resnet, wide_resnet  # noqa: F401  (registers the models)
from menet.models.base import Classifier, Normalize
from menet.models.registry import (
    build_model,
    build_model_for_dataset,
    model_names,
    register_model,
)

__all__ = ["Classifier", "Normalize", "build_model", "build_model_for_dataset", "model_names", "register_model"]
