"""Batched matrix estimation: USVT, Soft-Impute, nuclear-norm and total-variation minimisation.

Common contract: ``a`` is float32/float64 (..., m, n) on any device, ``mask`` a bool tensor
of the same shape (True = observed); each function returns a tensor like ``a``, and the
unobserved entries of ``a`` never influence the result. ``METHODS`` holds one record per
method (estimator, defaults, differentiability); ``get_method(name)`` looks one up.
"""

from __future__ import annotations

from menet.estimation.nuclear_norm import nuclear_norm
from menet.estimation.registry import METHODS, Method, get_method
from menet.estimation.soft_impute import soft_impute
from menet.estimation.tv import tv_minimization
from menet.estimation.usvt import usvt

__all__ = ["METHODS", "Method", "get_method", "nuclear_norm", "soft_impute", "tv_minimization", "usvt"]
