"""Attacks on models that take [0, 1] images, behind one registry.

All are called as ``attack(model, images, labels, *, generator=None) -> adversarial images``
(see ``menet.attacks.base``). ``build_attack(name, **settings)`` builds a registered attack;
``attack_names()`` lists them; ``eot`` and ``transfer`` wrap others.
"""

from menet.attacks import adaptive, autoattack, boundary, pgd, spsa  # noqa: F401  (registers the attacks)
from menet.attacks.adaptive import ApproxInput, ProjectedBPDA
from menet.attacks.autoattack import AutoAttack
from menet.attacks.base import (
    Attack,
    attack_names,
    build_attack,
    describe_attack,
    get_attack_class,
    register_attack,
)
from menet.attacks.boundary import Boundary
from menet.attacks.eot import eot
from menet.attacks.pgd import FGSM, PGD, pgd_loop
from menet.attacks.spsa import SPSA
from menet.attacks.transfer import Transfer, transfer

__all__ = [
    "FGSM", "PGD", "SPSA", "ApproxInput", "Attack", "AutoAttack", "Boundary", "ProjectedBPDA", "Transfer", "attack_names",
    "build_attack", "describe_attack", "eot", "get_attack_class", "pgd_loop", "register_attack", "transfer",
]
