"""The score-based L-inf SPSA attack (Uesato, O'Donoghue, van den Oord and Kohli, ICML 2018).

SPSA uses only the model's logits, never its gradient: each step estimates the gradient of the
CW margin loss from finite differences along random sign directions, takes an Adam step on the
perturbation and projects back onto the eps-ball and [0, 1]. The ME-Net paper (Table 2) runs
cleverhans' ``SPSA`` with eps 8/255, nb_iter 1000, spsa_samples 2048 ("a batch-size of 2048")
and the remaining settings at cleverhans' defaults; those are this module's defaults.

What follows cleverhans (``cleverhans/attacks/spsa.py``: ``SPSAAdam``, ``projected_optimization``):

- the start is a uniform random point of the eps-ball (clipped to [0, 1]);
- ``samples`` counts model evaluations per step: samples / 2 Rademacher directions v, each
  evaluated at x + delta v and at x - delta v (antithetic pairs);
- Adam (beta1 0.9, beta2 0.999, epsilon 1e-9, lr 0.01) on the perturbation, minimising
  ``true logit - largest other logit``; after each step the point is projected;
- optional early stopping: cleverhans' ``early_stop_loss_threshold`` (default None, off) set
  to 0 ends the attack once the current point is misclassified; ``early_stop`` does that per
  example (on by default). Against a deterministic model it only saves queries; against a
  randomised one (ME-Net), ``early_stop=False`` goes on to points misclassified by a wider
  margin, which more mask draws then misclassify too.

What differs, and why:

- cleverhans' estimate is ``mean(L(x + delta v) v)`` over the 2 x pairs evaluations, which is
  ``delta`` times the central-difference estimate used here (``spsa_gradient``, an unbiased
  estimate of the gradient that can be tested against autograd). Adam is invariant to the
  scale of its gradient up to its epsilon, so dividing that epsilon by ``delta`` makes each
  update identical to cleverhans'.
- Probe points x +- delta v are clipped to [0, 1], because the defended model rejects inputs
  outside it (cleverhans and torchattacks do not clip). A pixel within delta of a bound then
  gets a one-sided, shorter difference, which scales that coordinate's estimate by about 1/2
  and keeps its sign; Adam's per-coordinate normalisation makes that scale nearly immaterial.
- cleverhans attacks one image per call (batch size 1); here a batch of images is attacked at
  once, their probes evaluated together in forward passes of at most ``max_batch`` inputs,
  with per-example Adam state and per-example early stopping.
- cleverhans returns the last iterate; here each example's best point seen is returned:
  misclassified first, then the highest margin loss (largest other logit minus the true
  one), over the start and every iterate. With early stopping that is the first
  misclassified point; otherwise it can only be stronger than the last iterate.
- cleverhans' ``spsa_iters`` (several estimates summed per step) is not offered: with Adam it
  equals ``samples`` multiplied by ``spsa_iters``.

Cost: steps x samples model evaluations per example (2,048,000 at the paper's settings), less
with early stopping. A randomised model (ME-Net's masks) draws fresh randomness in every
forward pass, so each loss value is one sample; "misclassified" at one evaluation is a single
draw and is rescored by the evaluation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from menet.attacks.base import (
    Attack,
    check_number,
    margin_loss,
    project_linf,
    random_start,
    register_attack,
    uniform,
)
from menet.attacks.pgd import RESTART_CHECK_DRAWS, _better
from menet.defense import MatrixEstimation

ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
CLEVERHANS_ADAM_EPSILON = 1e-9  # TensorAdam's; divided by delta here, as our estimate is 1/delta times its


def rademacher(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Independent +-1 entries of ``shape`` (probability 1/2 each), dtype and device of ``like``."""
    signs = uniform(shape, generator, like).lt_(0.5)  # 1.0 where u < 1/2, else 0.0 (in place)
    return signs.mul_(-2.0).add_(1.0)


@torch.no_grad()
def spsa_gradient(model: nn.Module, x: Tensor, labels: Tensor, *, samples: int = 2048, delta: float = 0.01,
                  max_batch: int = 4096, generator: torch.Generator | None = None) -> Tensor:
    """SPSA estimate (Spall, 1992; Uesato et al., 2018) of the input gradient of ``margin_loss``.

    x: (N, C, H, W) in [0, 1]; labels: (N,) int64. Returns (N, C, H, W):
    ``mean_v (L(x + delta v) - L(x - delta v)) / (2 delta) * v`` over ``samples // 2``
    Rademacher directions v per example (``samples`` model evaluations per example), with
    L = ``margin_loss`` (largest other logit minus the true one). For a loss smooth on the
    scale of ``delta`` this is an unbiased estimate of the gradient; its error per coordinate
    is about the gradient's norm over sqrt(samples / 2). Probe points are clipped to [0, 1].

    The probes run in forward passes of at most ``max_batch`` (>= 2) inputs, each holding
    k directions for each of a block of b examples (2 k b <= max_batch): the examples are
    split into blocks only when 2 N > max_batch, so there is no Python loop over examples or
    directions, only over passes.
    """
    n = len(x)
    pairs = samples // 2
    grad = torch.zeros_like(x)
    block = min(n, max_batch // 2)
    for lo in range(0, n, block):
        centre, target = x[lo : lo + block, None], labels[lo : lo + block]  # (b, 1, C, H, W), (b,)
        per_pass = max(1, max_batch // (2 * len(target)))
        for done in range(0, pairs, per_pass):
            k = min(per_pass, pairs - done)
            v = rademacher((len(target), k, *x.shape[1:]), generator, x)  # (b, k, C, H, W)
            probes = torch.empty((2, *v.shape), dtype=x.dtype, device=x.device)
            torch.add(centre, v, alpha=delta, out=probes[0])
            torch.sub(centre, v, alpha=delta, out=probes[1])
            logits = model(probes.clamp_(0.0, 1.0).flatten(0, 2))
            loss = margin_loss(logits, target.repeat_interleave(k).repeat(2)).view(2, len(target), k)
            slope = ((loss[0] - loss[1]) / (2 * delta)).to(x.dtype)  # (b, k)
            # sum_k slope[b, k] v[b, k] for every example b, as one batched product
            grad[lo : lo + block] += torch.bmm(slope[:, None], v.flatten(2)).view(-1, *x.shape[1:])
    return grad / pairs


@torch.no_grad()
def _score(model: nn.Module, x: Tensor, labels: Tensor, max_batch: int, passes: int = 1) -> tuple[Tensor, Tensor]:
    """margin_loss (N,) averaged over ``passes`` forward passes, and misclassified flags (N,):
    misclassified in every pass (a randomised model's one pass can be fooled by luck)."""
    losses, fooled = [], torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(passes):
        logits = torch.cat([model(x[i : i + max_batch]) for i in range(0, len(x), max_batch)])
        losses.append(margin_loss(logits, labels))
        fooled &= logits.argmax(1) != labels
    return torch.stack(losses).mean(0), fooled


@torch.no_grad()
def spsa_loop(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float, start: Tensor, steps: int = 1000,
              samples: int = 2048, lr: float = 0.01, delta: float = 0.01, early_stop: bool = True,
              max_batch: int = 4096, generator: torch.Generator | None = None, score_passes: int = 1,
              ) -> tuple[Tensor, Tensor, Tensor]:
    """SPSA with Adam from ``start``: ``steps`` projected updates. Returns (best, loss, fooled).

    images, start: (N, C, H, W) in [0, 1]; labels (N,). ``best`` holds per example the most
    adversarial point scored (the start, then each iterate): misclassified first, then the
    highest ``margin_loss``; ``loss`` and ``fooled`` (N,) are its score. ``early_stop``: an
    example stops being updated (and costs nothing more) once its current point is
    misclassified. ``score_passes``: forward passes per scoring (loss averaged, misclassified
    only if in all of them), for randomised models. The model's mode is left as it is: callers
    put it in eval mode.
    """
    n = len(images)
    adv = start.detach().clone()
    first_moment = torch.zeros_like(adv)
    second_moment = torch.zeros_like(adv)
    adam_epsilon = CLEVERHANS_ADAM_EPSILON / delta
    best = adv.clone()
    best_loss = torch.full((n,), float("-inf"), device=images.device)
    best_fooled = torch.zeros(n, dtype=torch.bool, device=images.device)
    active = torch.arange(n, device=images.device)
    for step in range(steps + 1):
        loss, fooled = _score(model, adv[active], labels[active], max_batch, score_passes)
        better = _better(loss, fooled, best_loss[active], best_fooled[active])
        improved = active[better]
        best[improved] = adv[improved]
        best_loss[improved] = loss[better]
        best_fooled[improved] = fooled[better]
        if early_stop:
            active = active[~fooled]
        if step == steps or len(active) == 0:
            break
        grad = spsa_gradient(model, adv[active], labels[active], samples=samples, delta=delta,
                             max_batch=max_batch, generator=generator)
        # Adam on the perturbation, ascending the margin loss; every active example has taken
        # exactly `step` updates before this one, so one bias correction serves all of them.
        first_moment[active] = ADAM_BETA1 * first_moment[active] + (1 - ADAM_BETA1) * grad
        second_moment[active] = ADAM_BETA2 * second_moment[active] + (1 - ADAM_BETA2) * grad * grad
        m_hat = first_moment[active] / (1 - ADAM_BETA1 ** (step + 1))
        v_hat = second_moment[active] / (1 - ADAM_BETA2 ** (step + 1))
        moved = adv[active] + lr * m_hat / (v_hat.sqrt() + adam_epsilon)
        adv[active] = project_linf(moved, images[active], eps)
    return best, best_loss, best_fooled


@register_attack
@dataclasses.dataclass(frozen=True)
class SPSA(Attack):
    """L-inf SPSA (Uesato et al., 2018): score-based, Adam on finite-difference gradient estimates.

    eps: L-inf budget (default 8/255); steps: Adam updates (1000, the paper's ``--iter``
    default); samples: model evaluations per example per step, samples / 2 antithetic
    Rademacher directions (2048, the paper's "batch size"; even, >= 2); lr: Adam learning
    rate (0.01); delta: probe distance (0.01); random_start: begin at a uniform point of the
    eps-ball, as cleverhans does (True); early_stop: stop updating an example once it is
    misclassified, keeping that point (True; cleverhans' early_stop_loss_threshold=0; on a
    randomised model each point is scored by 3 passes and counts as misclassified only if it is
    in all of them, so a lucky mask draw neither stops the attack nor pins a weak point);
    max_batch: most model inputs per forward pass (4096). Returns per example the best point
    seen (misclassified first, then highest margin loss). Shapes: images (N, C, H, W) in
    [0, 1], labels (N,) int64. Differences from cleverhans: see ``menet.attacks.spsa``.
    Example: ``SPSA(steps=100, samples=256)(model, x, y, generator=torch.Generator().manual_seed(0))``.
    """

    name = "spsa"
    steps: int = 1000
    samples: int = 2048
    lr: float = 0.01
    delta: float = 0.01
    random_start: bool = True
    early_stop: bool = True
    max_batch: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("steps", self.steps, low=0, integer=True)
        check_number("samples", self.samples, low=2, integer=True)
        if self.samples % 2:
            raise ValueError(f"samples must be even (antithetic pairs), got {self.samples}")
        check_number("lr", self.lr, low=0.0, low_open=True)
        check_number("delta", self.delta, low=0.0, low_open=True)
        check_number("max_batch", self.max_batch, low=2, integer=True)
        for flag in ("random_start", "early_stop"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {getattr(self, flag)!r}")

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        start = random_start(images, self.eps, generator) if self.random_start and self.eps > 0 else images
        randomised = any(isinstance(m, MatrixEstimation) for m in model.modules())
        best, _, _ = spsa_loop(model, images, labels, eps=self.eps, start=start, steps=self.steps,
                               samples=self.samples, lr=self.lr, delta=self.delta, early_stop=self.early_stop,
                               max_batch=self.max_batch, generator=generator,
                               score_passes=RESTART_CHECK_DRAWS if randomised else 1)
        return best
