"""What every attack shares: the registry, the call contract, and the small helpers.

Every attack is a frozen dataclass holding its settings, registered by name, and called as
``attack(model, images, labels, *, generator=None) -> adversarial images``: images (N, C, H,
W) in [0, 1], labels (N,) int64, the result in [0, 1] and within the attack's L-inf budget
``eps`` of ``images``. The model is an argument, not part of the attack, so wrappers compose
(``eot`` averages over random masks, ``transfer`` crafts on another model). The call puts the
model in eval mode and restores its train/eval flags afterwards; randomness (starts, samples)
comes from ``generator`` (a seeded torch.Generator makes the attack repeatable; a defended
model draws its masks from its own generator).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ATTACKS: dict[str, type[Attack]] = {}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: add a frozen-dataclass attack under ``cls.name``."""
    if cls.name in _ATTACKS:
        raise ValueError(f"attack {cls.name!r} is already registered")
    _ATTACKS[cls.name] = cls
    return cls


def attack_names() -> list[str]:
    """The registered attack names, sorted."""
    return sorted(_ATTACKS)


def get_attack_class(name: str) -> type[Attack]:
    """The attack class registered under ``name``; an unknown name lists the valid ones."""
    try:
        return _ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(attack_names())}") from None


def build_attack(name: str, **settings: Any) -> Attack:
    """Build the attack ``name`` with ``settings``; unknown settings name the valid ones."""
    cls = get_attack_class(name)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown} for attack {name!r}; valid: {valid}")
    return cls(**settings)


def describe_attack(name: str) -> str:
    """The first paragraph of the attack's docstring, on one line."""
    doc = (get_attack_class(name).__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else name


@dataclasses.dataclass(frozen=True)
class Attack:
    """Base of all attacks: validates the call, guards the model's mode, runs ``run``."""

    name: ClassVar[str] = "attack"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        check_number("eps", self.eps, low=0.0)

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, *,
                 generator: torch.Generator | None = None) -> Tensor:
        check_batch(images, labels)
        if len(images) == 0:
            return images.clone()
        with eval_mode(model):
            adv = self.run(model, images.detach(), labels, generator)
        return adv.detach()

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The attack's name and settings, JSON-ready (for result files)."""
        out: dict[str, Any] = {"attack": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.settings() if isinstance(value, Attack) else value
        return out


# --- checks ------------------------------------------------------------------------------

def check_number(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 integer: bool = False, low_open: bool = False) -> None:
    """Raise ValueError/TypeError unless ``value`` is a finite number in the given range."""
    kind = "an int" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value!r}")


def check_batch(images: Tensor, labels: Tensor) -> None:
    """Raise unless images are float (N, C, H, W) in [0, 1] and labels int64 (N,)."""
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
        raise ValueError(f"images must be a float tensor (N, C, H, W), got {getattr(images, 'shape', type(images))}")
    if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError("images must lie in [0, 1] (normalisation belongs inside the model)")
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be int64 of shape ({len(images)},), got "
                         f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


# --- geometry and randomness ---------------------------------------------------------------

def project_linf(x: Tensor, original: Tensor, eps: float) -> Tensor:
    """The nearest point of the L-inf ball of radius ``eps`` around ``original``, in [0, 1]."""
    return torch.min(torch.max(x, original - eps), original + eps).clamp(0.0, 1.0)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """U[0, 1) of ``shape``, drawn on the generator's device, returned on ``like``'s."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def random_start(images: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """A uniform point of the eps-ball around ``images`` (clipped to [0, 1])."""
    noise = uniform(tuple(images.shape), generator, images)
    return project_linf(images + (2 * noise - 1) * eps, images, eps)


# --- losses and gradients ------------------------------------------------------------------

def cross_entropy_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example cross-entropy (N,)."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example CW margin (N,): the largest other logit minus the true one (> 0: misclassified).

    The L-inf CW attack of the paper (Carlini and Wagner, 2017, as used by Madry et al.) is PGD
    on this loss."""
    logits = logits.float()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.max(1).values - true


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"ce": cross_entropy_loss, "cw": margin_loss}


def check_loss(name: str) -> None:
    """Raise ValueError for an unknown loss name, listing the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")


@dataclasses.dataclass
class LossGradient:
    """The loss at a point and its input gradient, averaged over EOT samples."""

    loss: Tensor  # (N,) mean loss over the samples
    grad: Tensor  # (N, C, H, W) mean gradient over the samples
    fooled: Tensor  # (N,) bool: the mean of the samples' softmax is not on the true label


def loss_gradient(model: nn.Module, x: Tensor, labels: Tensor, loss: str = "ce", samples: int = 1,
                  max_batch: int = 1024) -> LossGradient:
    """Loss, input gradient and fooled flags of ``model`` at ``x``, averaged over ``samples``
    forward passes (EOT: a randomised model draws fresh masks in each).

    The samples run as copies in one batch of at most ``max_batch`` images (more copies run
    in several batches, gradients accumulated), not as a Python loop per sample.
    """
    loss_fn = LOSSES[loss]
    n = len(x)
    total_loss = torch.zeros(n, device=x.device)
    total_grad = torch.zeros_like(x)
    total_prob: Tensor | None = None
    copies_per_batch = max(1, max_batch // max(n, 1))
    done = 0
    while done < samples:
        k = min(copies_per_batch, samples - done)
        xk = x.detach().repeat(k, 1, 1, 1).requires_grad_(True)
        with torch.enable_grad():
            logits = model(xk)
            per_example = loss_fn(logits, labels.repeat(k))
            (grad,) = torch.autograd.grad(per_example.sum(), xk)
        total_loss += per_example.detach().view(k, n).sum(0)
        total_grad += grad.view(k, *x.shape).sum(0)
        prob = logits.detach().float().softmax(1).view(k, n, -1).sum(0)
        total_prob = prob if total_prob is None else total_prob + prob
        done += k
    return LossGradient(total_loss / samples, total_grad / samples, total_prob.argmax(1) != labels)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, max_batch: int = 1024) -> Tensor:
    """Predicted labels (N,) of ``model`` on ``x``, in batches of ``max_batch`` (N may be 0)."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    return torch.cat([model(x[i : i + max_batch]).argmax(1) for i in range(0, len(x), max_batch)])
