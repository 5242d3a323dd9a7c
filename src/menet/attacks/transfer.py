"""Transfer attacks: craft on an independently trained source model, evaluate on the target."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from menet.attacks.base import Attack, eval_mode


@dataclasses.dataclass(frozen=True)
class Transfer(Attack):
    """Black-box transfer (Papernot et al., 2017): ``attack`` run on ``source``, not the target.

    The paper's transfer attacks craft white-box FGSM, PGD and CW examples on a copy of the
    victim trained with the same settings. The target model passed at call time is not used.
    Example: ``Transfer(source=load_model("runs/copy"), attack=PGD(steps=40))(target, x, y)``.
    """

    name = "transfer"
    source: nn.Module | None = None
    attack: Attack | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, nn.Module) or not isinstance(self.attack, Attack):
            raise TypeError("Transfer needs a source model (nn.Module) and an attack")
        object.__setattr__(self, "eps", self.attack.eps)

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        with eval_mode(self.source):
            return self.attack(self.source, images, labels, generator=generator)

    def settings(self) -> dict[str, Any]:
        return {"attack": "transfer", "of": self.attack.settings()}


def transfer(source: nn.Module, attack: Attack) -> Transfer:
    """``attack`` crafted on ``source`` (e.g. ``load_model("runs/vanilla-copy")``)."""
    return Transfer(source=source, attack=attack)
