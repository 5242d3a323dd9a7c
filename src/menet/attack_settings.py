"""Attacks from plain settings: a recipe's ``{attack: pgd, steps: 40, eot: 4, ...}`` mappings
turned into attack objects (EOT and transfer wrapped around them where asked).

Recipes (``menet.recipe``) check their settings with it at load time, the chain
(``menet.reproduce``) builds the attacks it runs with it, so both agree on what a setting means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from menet.attacks import Attack, build_attack, eot, get_attack_class, transfer


def attack_fields(kind: str) -> set[str]:
    """The setting names of the registered attack ``kind`` (ValueError listing the valid ones)."""
    return {f.name for f in dataclasses.fields(get_attack_class(kind))}


def attack_default(kind: str, key: str) -> Any:
    """The default value of setting ``key`` of attack ``kind``."""
    return {f.name: f.default for f in dataclasses.fields(get_attack_class(kind))}[key]


def build_attacks(attacks: Mapping[str, Mapping[str, Any]], source: nn.Module | None = None) -> dict[str, Attack]:
    """name -> attack, from name -> settings (``attack`` names the registered attack, ``eot`` the
    number of EOT samples, the rest are the attack's fields); wrapped in ``transfer`` from
    ``source`` when one is given. Bad settings raise ValueError or TypeError."""
    built = {}
    for name, settings in attacks.items():
        settings = dict(settings)
        kind = settings.pop("attack")
        samples = settings.pop("eot", None)
        attack = build_attack(kind, **settings)
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"attack {name!r}: eot must be an integer >= 1 (gradient samples per step), got {samples!r}")
        if samples is not None and samples > 1:
            attack = eot(attack, samples)
        built[name] = transfer(source, attack) if source is not None else attack
    return built
