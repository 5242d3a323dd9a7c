"""Batched matrix estimation: USVT, Soft-Impute and nuclear-norm minimisation.

Common contract: ``a`` is float32/float64 (..., m, n) on any device, ``mask`` a bool tensor
of the same shape (True = observed); each function returns a tensor like ``a``, and the
unobserved entries of ``a`` never influence the result.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from menet.estimation.nuclear_norm import nuclear_norm
from menet.estimation.soft_impute import soft_impute
from menet.estimation.usvt import usvt

ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "usvt": usvt,
    "softimpute": soft_impute,
    "nucnorm": nuclear_norm,
}


def get_estimator(name: str) -> Callable[..., Tensor]:
    """The estimator registered under ``name`` ("usvt", "softimpute", "nucnorm")."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown matrix-estimation method {name!r}; valid: {', '.join(ESTIMATORS)}"
        ) from None


__all__ = ["ESTIMATORS", "get_estimator", "nuclear_norm", "soft_impute", "usvt"]
