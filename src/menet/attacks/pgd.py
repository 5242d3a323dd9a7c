"""L-infinity projected gradient descent (Madry et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pgd_linf(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Untargeted L-inf PGD maximising cross-entropy; returns adversarial images in [0, 1].

    images (N, C, H, W) in [0, 1], labels (N,). With a defended model whose preprocessing
    uses BPDA, this is the BPDA attack. The model's train/eval mode is left as it is.
    Example: ``adv = pgd_linf(model, x, y, eps=8/255, step=2/255, steps=7)``.
    """
    if eps < 0 or step < 0 or steps < 0:
        raise ValueError(f"eps, step and steps must be >= 0, got {eps}, {step}, {steps}")
    original = images.detach()
    adv = original.clone()
    if random_start and eps > 0:
        device = generator.device if generator is not None else adv.device
        noise = torch.rand(adv.shape, generator=generator, device=device, dtype=adv.dtype).to(adv.device)
        adv = (adv + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), labels)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.min(torch.max(adv, original - eps), original + eps).clamp(0, 1)
    return adv.detach()
