"""One record per masked-reconstruction method: its estimator, defaults and differentiability.

The defense (``MatrixEstimation``), the training config and the command line all read these
records, so a method's facts live in one place. ``resolve_options`` turns what a user gave
into the complete option set (every option by name, defaults filled in), which is what the
defense shows in its repr and a run saves in config.yaml; ``check_options`` also runs the
estimator once on a blank matrix of the real shape, so that out-of-range values fail before
any work with the estimator's own message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from menet.estimation.nuclear_norm import nuclear_norm
from menet.estimation.soft_impute import soft_impute
from menet.estimation.tv import tv_minimization
from menet.estimation.usvt import usvt, usvt_rule


def _no_defaults(given: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _usvt_defaults(given: Mapping[str, Any]) -> dict[str, Any]:
    # The original code keeps the top 80% of singular values ("svdprob"); a user who names
    # either rule option (rank_fraction: null selects Chatterjee's threshold) chooses the rule.
    return {} if {"rank", "rank_fraction"} & set(given) else {"rank_fraction": 0.8}


@dataclass(frozen=True)
class Method:
    """A masked-reconstruction method as the defense uses it.

    ``estimate(a, mask, **options)`` maps float (..., m, n) matrices and bool masks (True =
    observed) to estimates of the same shape. ``defense_defaults(given)`` returns the defaults
    the defense adds to the options the user ``given`` (beyond the function's own).
    ``differentiable``: whether ``gradient="exact"`` can differentiate through it.
    """

    name: str
    estimate: Callable[..., Tensor]
    summary: str
    differentiable: bool = False
    defense_defaults: Callable[[Mapping[str, Any]], dict[str, Any]] = field(default=_no_defaults)
    describe: Callable[..., str] | None = None  # options -> the rule they select, in words

    def option_names(self) -> list[str]:
        """The estimator's keyword options, in signature order."""
        return [p for p in inspect.signature(self.estimate).parameters if p not in ("a", "mask")]

    def resolve_options(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every option by name: the estimator's defaults, the defense's, then ``given``.

        Unknown names raise TypeError listing the valid ones. Tuples become lists (YAML-safe).
        """
        given = dict(given or {})
        valid = self.option_names()
        unknown = sorted(set(given) - set(valid))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown} for method {self.name!r}; valid: {valid}")
        params = inspect.signature(self.estimate).parameters
        options = {name: params[name].default for name in valid}
        options.update(self.defense_defaults(given))
        options.update(given)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}

    def check_options(self, given: Mapping[str, Any] | None, matrix_shape: tuple[int, int]) -> dict[str, Any]:
        """``resolve_options``, then one call on a blank (1, m, n) matrix so that values out of
        range raise the estimator's own TypeError/ValueError before any real work."""
        options = self.resolve_options(given)
        m, n = matrix_shape
        blank = torch.zeros(1, m, n, dtype=torch.float64)
        with torch.no_grad():
            self.estimate(blank, torch.ones(1, m, n, dtype=torch.bool), **options)
        return options

    def rule(self, options: Mapping[str, Any]) -> str | None:
        """The rule the options select, in words, where the method has one to tell."""
        return None if self.describe is None else self.describe(**options)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("usvt", usvt, "universal singular value thresholding (Chatterjee, 2015)",
               differentiable=True, defense_defaults=_usvt_defaults, describe=usvt_rule),
        Method("softimpute", soft_impute, "Soft-Impute (Mazumder et al., 2010), fancyimpute's defaults"),
        Method("nucnorm", nuclear_norm, "nuclear-norm minimisation (Candes and Recht, 2009), ADMM then FISTA"),
        Method("tv", tv_minimization, "total-variation minimisation (Guo et al., 2018), Table 3's baseline"),
    )
}


def get_method(name: str) -> Method:
    """The method registered under ``name``; an unknown name lists the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown matrix-estimation method {name!r}; valid: {', '.join(METHODS)}") from None
