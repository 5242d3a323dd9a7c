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
    LOSSES,
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


def _loss_sum(model: nn.Module, x: Tensor, labels: Tensor, loss: str, passes: int, max_batch: int) -> Tensor:
    """(N,) sum of the loss over ``passes`` forward passes without gradient (fresh masks in each),
    run as copies in batches of at most ``max_batch`` images like ``loss_gradient``."""
    loss_fn = LOSSES[loss]
    n = len(x)
    total = torch.zeros(n, device=x.device)
    copies_per_batch = max(1, max_batch // max(n, 1))
    done = 0
    with torch.no_grad():
        while done < passes:
            k = min(copies_per_batch, passes - done)
            total += loss_fn(model(x.repeat(k, 1, 1, 1)), labels.repeat(k)).view(k, n).sum(0)
            done += k
    return total


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
    rank_samples: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """PGD from ``start``: ``steps`` signed-gradient steps of ``step_size``, each projected on
    the eps-ball around ``images`` and [0, 1]. Returns (adversarial, loss, fooled) per example.

    ``samples`` > 1 averages each gradient over that many forward passes (EOT).
    ``keep_best``: return per example the most adversarial iterate seen (fooled first, then
    the highest loss), the final one included; otherwise the last iterate (training's choice).
    ``by_loss``: keep the highest-loss iterate, whether or not its one pass was fooled (for
    randomised models, where a fooled pass is one draw's luck; the loss of one pass is noisy
    too, less so than its 0/1 outcome).
    ``rank_samples``: with ``by_loss``, rank iterates by the loss averaged over max(samples,
    rank_samples) forward passes (PGD's default, 0 on a randomised model, keeps the last iterate instead): the ``samples`` gradient passes (``loss_gradient`` returns
    their mean loss, so EOT ranks on averaged losses at no extra cost) plus rank_samples -
    samples passes without gradient where rank_samples is larger.
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
            rank_loss = current.loss
            if by_loss and rank_samples > samples:  # more passes than the gradient's: average them all
                extra = _loss_sum(model, adv, labels, loss, rank_samples - samples, max_batch)
                rank_loss = (current.loss * samples + extra) / rank_samples
            better = _better(rank_loss, current.fooled, best_loss, best_fooled, by_loss)
            best[better] = adv[better]
            best_loss = torch.where(better, rank_loss, best_loss)
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
    on a randomised model judged by 3 fresh forward passes that must all be fooled); loss: "ce"
    (cross-entropy) or "cw" (the L-inf CW margin loss); eot: gradient samples per step (1; see
    ``eot``); keep_best (True): return per example the most adversarial iterate seen
    (misclassified first, then highest loss) rather than the last one; False: the last iterate.
    rank_samples (0): on a randomised model (one holding a MatrixEstimation, e.g. ME-Net) one
    pass's misclassification is largely luck, so keep_best there ranks iterates by loss alone,
    averaged over max(eot, rank_samples) forward passes (the eot gradient passes count among
    them; the others cost a forward pass each per step); 0 ranks nothing there and keeps the
    last iterate. That is the default because it was the strongest and cheapest on a trained
    nuclear-norm ME-Net (benchmarks/RESULTS.md, "Kept iterate on a randomised model": BPDA
    PGD-40 left 21.5% robust with the last iterate, 22.3% ranked by one pass's loss, 22.4% by
    4 passes' mean at ~3x the cost). Deterministic models ignore rank_samples.
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
    rank_samples: int = 0
    max_batch: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("step_size", self.step_size, low=0.0)
        check_number("rank_samples", self.rank_samples, low=0, integer=True)
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
        keep_best = self.keep_best and not (randomised and self.rank_samples == 0)  # see the docstring
        for restart in range(self.restarts):
            todo = (~done).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            x, y = images[todo], labels[todo]
            adv, loss, fooled = pgd_loop(
                model, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps,
                start=self.start(model, x, generator), loss=self.loss, samples=self.eot,
                keep_best=keep_best, grad_transform=self.grad_transform(model, x), max_batch=self.max_batch,
                by_loss=randomised, rank_samples=self.rank_samples,
            )
            if not keep_best:  # the last iterate: score it (pgd_loop scores only the iterates it keeps)
                fooled = predict(model, adv, self.max_batch) != y
                loss = torch.zeros_like(loss)
            better = _better(loss, fooled, best_loss[todo], best_fooled[todo], randomised and keep_best) | (restart == 0)
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
