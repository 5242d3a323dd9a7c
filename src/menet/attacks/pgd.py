"""L-inf projected gradient descent (Madry et al., 2018) and FGSM (Goodfellow et al., 2015).

Through a defended model whose preprocessing uses BPDA (``load_model(run, gradient="bpda")``)
PGD is the paper's white-box BPDA attack; wrapped by ``eot`` it averages each step's gradient
over fresh random masks; ``loss="cw"`` makes it the L-inf CW attack (PGD on the margin loss).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from menet.attacks.base import (
    Attack,
    check_loss,
    check_number,
    loss_gradient,
    predict,
    project_linf,
    random_start,
    register_attack,
)
from menet.defense import MatrixEstimation

GradTransform = Callable[[Tensor], Tensor]
RESTART_CHECK_DRAWS = 3  # fresh forward passes that must all be fooled before a randomised model's example stops restarting


def _better(loss: Tensor, fooled: Tensor, best_loss: Tensor, best_fooled: Tensor, by_loss: bool = False) -> Tensor:
    """Where (fooled, loss) beats (best_fooled, best_loss): fooled first, then higher loss; with
    ``by_loss`` (randomised models, where one pass's misclassification is one draw's luck) the
    higher loss alone."""
    if by_loss:
        return loss > best_loss
    return (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))


def pgd_loop(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    start: Tensor,
    loss: str = "ce",
    samples: int = 1,
    keep_best: bool = True,
    grad_transform: GradTransform | None = None,
    max_batch: int = 1024,
    by_loss: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """PGD from ``start``: ``steps`` signed-gradient steps of ``step_size``, each projected on
    the eps-ball around ``images`` and [0, 1]. Returns (adversarial, loss, fooled) per example.

    ``samples`` > 1 averages each gradient over that many forward passes (EOT).
    ``keep_best``: return per example the most adversarial iterate seen (fooled first, then
    the highest loss), the final one included; otherwise the last iterate (training's choice).
    ``by_loss``: keep the highest-loss iterate, whether or not its one pass was fooled (for
    randomised models, where a fooled pass is one draw's luck; the loss of one pass is noisy
    too, less so than its 0/1 outcome: use EOT samples to rank iterates on averaged losses).
    ``grad_transform`` maps each gradient before its sign is taken (projected BPDA).
    The model's mode is left as it is: callers put it in eval mode.
    """
    adv = start.detach()
    n = len(images)
    best = adv.clone()
    best_loss = torch.full((n,), float("-inf"), device=images.device)
    best_fooled = torch.zeros(n, dtype=torch.bool, device=images.device)
    for step in range(steps + (1 if keep_best else 0)):
        last = step == steps  # only with keep_best: score the final iterate (its gradient unused)
        current = loss_gradient(model, adv, labels, loss, samples, max_batch)
        if keep_best:
            better = _better(current.loss, current.fooled, best_loss, best_fooled, by_loss)
            best[better] = adv[better]
            best_loss = torch.where(better, current.loss, best_loss)
            best_fooled = best_fooled | current.fooled
        if last:
            break
        grad = current.grad if grad_transform is None else grad_transform(current.grad)
        adv = project_linf(adv + step_size * grad.sign(), images, eps).detach()
    if keep_best:
        return best, best_loss, best_fooled
    return adv, best_loss, best_fooled


@register_attack
@dataclasses.dataclass(frozen=True)
class PGD(Attack):
    """L-inf PGD (Madry et al., 2018): random start, signed steps, restarts, best iterate kept.

    eps: L-inf budget (default 8/255); step_size (2/255); steps (40); random_start (True);
    restarts (1: restarts > 1 run again from new random starts on the examples not yet fooled,
    on a randomised model judged by 3 fresh forward passes that must all be fooled); loss: "ce" (cross-entropy) or "cw" (the L-inf CW margin loss); eot: gradient
    samples per step (1; see ``eot``); keep_best: return per example the most adversarial
    iterate seen (misclassified first, then highest loss; on a randomised model the highest
    loss alone, as one pass's misclassification is largely luck) rather than the last one.
    Example: ``PGD(eps=8/255, step_size=2/255, steps=1000)(model, x, y, generator=g)``.
    """

    name = "pgd"
    step_size: float = 2 / 255
    steps: int = 40
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    eot: int = 1
    keep_best: bool = True
    max_batch: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("step_size", self.step_size, low=0.0)
        check_number("steps", self.steps, low=0, integer=True)
        check_number("restarts", self.restarts, low=1, integer=True)
        check_number("eot", self.eot, low=1, integer=True)
        check_number("max_batch", self.max_batch, low=1, integer=True)
        check_loss(self.loss)

    def start(self, model: nn.Module, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """Where one restart begins: a random point of the ball, or the image itself."""
        return random_start(images, self.eps, generator) if self.random_start and self.eps > 0 else images

    def grad_transform(self, model: nn.Module, images: Tensor) -> GradTransform | None:
        """How each gradient is mapped before its sign is taken (none for plain PGD)."""
        return None

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        result = images.clone()
        n = len(images)
        best_loss = torch.full((n,), float("-inf"), device=images.device)
        best_fooled = torch.zeros(n, dtype=torch.bool, device=images.device)
        done = torch.zeros(n, dtype=torch.bool, device=images.device)  # no restart needed any more
        randomised = any(isinstance(m, MatrixEstimation) for m in model.modules())
        for restart in range(self.restarts):
            todo = (~done).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            x, y = images[todo], labels[todo]
            adv, loss, fooled = pgd_loop(
                model, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps,
                start=self.start(model, x, generator), loss=self.loss, samples=self.eot,
                keep_best=self.keep_best, grad_transform=self.grad_transform(model, x), max_batch=self.max_batch,
                by_loss=randomised,
            )
            if not self.keep_best:  # the last iterate: score it (pgd_loop scores only the iterates it keeps)
                fooled = predict(model, adv, self.max_batch) != y
                loss = torch.zeros_like(loss)
            better = _better(loss, fooled, best_loss[todo], best_fooled[todo], randomised and self.keep_best) | (restart == 0)
            chosen = todo[better]
            result[chosen] = adv[better]
            best_loss[chosen] = loss[better]
            best_fooled[chosen] = fooled[better]
            if self.restarts > 1:
                # Stop restarting an example once its adversarial fools the model; on a randomised
                # model (fresh masks per pass) only if it does so in several fresh passes, not one lucky one.
                checks = RESTART_CHECK_DRAWS if randomised else 1
                still = torch.ones(len(todo), dtype=torch.bool, device=images.device)
                for _ in range(checks):
                    still &= predict(model, result[todo], self.max_batch) != y
                done[todo] = still
        return result


@register_attack
@dataclasses.dataclass(frozen=True)
class FGSM(Attack):
    """FGSM (Goodfellow et al., 2015): one signed-gradient step of size eps from the image.

    eps: L-inf budget (default 8/255); loss: "ce" or "cw"; eot: gradient samples (1).
    Example: ``FGSM(eps=8/255)(model, x, y)``.
    """

    name = "fgsm"
    loss: str = "ce"
    eot: int = 1
    max_batch: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("eot", self.eot, low=1, integer=True)
        check_number("max_batch", self.max_batch, low=1, integer=True)
        check_loss(self.loss)

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        adv, _, _ = pgd_loop(model, images, labels, eps=self.eps, step_size=self.eps, steps=1, start=images,
                             loss=self.loss, samples=self.eot, keep_best=False, max_batch=self.max_batch)
        return adv
