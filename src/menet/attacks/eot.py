"""Expectation over transformation (Athalye et al., 2018) over ME-Net's random masks."""

from __future__ import annotations

import dataclasses

from menet.attacks.base import Attack, check_number


def eot(attack: Attack, samples: int) -> Attack:
    """``attack`` with each gradient averaged over ``samples`` forward passes (fresh masks each).

    The copies run as one batch (chunked when large). Applies to gradient attacks (those with
    an ``eot`` setting); a gradient-free attack raises TypeError.
    Example: ``eot(PGD(steps=200), samples=10)``.
    """
    check_number("samples", samples, low=1, integer=True)
    if "eot" not in {f.name for f in dataclasses.fields(attack)}:
        raise TypeError(f"EOT averages gradients: attack {attack.name!r} uses none")
    return dataclasses.replace(attack, eot=samples)
