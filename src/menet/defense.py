"""ME-Net's preprocessing as a module, and the defended model (preprocess, then classify)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from menet.estimation import METHODS, get_method
from menet.estimation.layout import (
    check_layout,
    images_to_matrices,
    matrices_to_images,
    matrix_mask_shape,
)
from menet.masking import check_probability, random_mask

GRADIENTS = ("bpda", "exact")


def check_images(images: Tensor) -> None:
    """Raise unless ``images`` is a float (N, C, H, W) tensor with values in [0, 1]."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a float tensor, got {getattr(images, 'dtype', type(images))}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError(
            "images must lie in [0, 1] (normalisation belongs inside the classifier), got "
            f"values in [{images.min().item():.3g}, {images.max().item():.3g}]"
        )


class MatrixEstimation(nn.Module):
    """Randomly mask pixels, then reconstruct each image by matrix estimation (ME-Net).

    Maps images (N, C, H, W) in [0, 1] to reconstructions of the same shape in [0, 1]: scale
    to [-1, 1], draw one keep-mask per image with probability ``p``, build matrices per
    ``layout`` ("concat": one H x (C*W) matrix and mask per image; "separate": one H x W
    matrix per channel sharing one H x W mask), estimate with ``method`` ("usvt",
    "softimpute", "nucnorm"; keyword arguments go to the estimator, e.g. ``rank`` (a count)
    or ``rank_fraction`` for USVT, whose default is rank_fraction=0.8 as in the original
    code; ``rank_fraction=None`` selects Chatterjee's threshold), map back and clip to [0, 1].
    ``options`` holds every estimator option by name, defaults filled in.

    ``gradient="bpda"``: the backward pass is the identity (Athalye et al., 2018); the
    estimator is never differentiated. ``gradient="exact"`` (USVT only) differentiates
    through the estimator, which is unstable where kept and dropped singular values are close.

    Example: ``MatrixEstimation("usvt", p=0.5)(torch.rand(8, 3, 32, 32))``.
    """

    def __init__(
        self,
        method: str = "nucnorm",
        p: float = 0.5,
        layout: str = "concat",
        gradient: str = "bpda",
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        spec = get_method(method)
        check_probability(p)
        check_layout(layout)
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}; valid: {', '.join(GRADIENTS)}")
        if gradient == "exact" and not spec.differentiable:
            differentiable = [name for name, m in METHODS.items() if m.differentiable]
            raise ValueError(
                f"gradient='exact' is only available for {', '.join(differentiable)}; "
                f"{method!r} is iterative and not differentiable: use gradient='bpda'"
            )
        self.method, self.p, self.layout, self.gradient = method, float(p), layout, gradient
        self.generator = generator
        self.options = spec.resolve_options(kwargs)
        self._spec = spec

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        rule = self._spec.rule(self.options)
        described = "" if rule is None else f", rule={rule!r}"
        return f"method={self.method!r}, p={self.p}, layout={self.layout!r}, gradient={self.gradient!r}{opts}{described}"

    def draw_mask(self, images: Tensor, p: float | Tensor | None = None) -> Tensor:
        """One keep-mask per image, shaped for :meth:`reconstruct` (see ``matrix_mask_shape``)."""
        shape = matrix_mask_shape(tuple(images.shape), self.layout)
        # Draw on the generator's device (e.g. a CPU generator for CUDA images), then move.
        device = self.generator.device if self.generator is not None else images.device
        return random_mask(shape, self.p if p is None else p, self.generator, device=device).to(images.device)

    def reconstruct(self, images: Tensor, mask: Tensor) -> Tensor:
        """Reconstruct ``images`` (N, C, H, W) in [0, 1] from the entries kept by ``mask``.

        ``mask`` is bool with shape ``matrix_mask_shape(images.shape, layout)``. Deterministic.
        """
        check_images(images)
        expected = matrix_mask_shape(tuple(images.shape), self.layout)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask must have shape {expected} for layout {self.layout!r}, got {tuple(mask.shape)}")
        return self._estimate(images, mask)

    def _estimate(self, images: Tensor, mask: Tensor) -> Tensor:
        """reconstruct() without the input checks (the caller has made them)."""
        # Estimators run in float32 (or float64 when given float64), also under autocast.
        work_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        with torch.autocast(images.device.type, enabled=False):
            matrices = images_to_matrices(images.to(work_dtype) * 2.0 - 1.0, self.layout)
            full_mask = mask.expand(matrices.shape)
            if self.gradient == "exact":
                estimate = self._spec.estimate(matrices, full_mask, **self.options)
            else:
                with torch.no_grad():
                    estimate = self._spec.estimate(matrices.detach(), full_mask, **self.options)
            recon = matrices_to_images((estimate + 1.0) * 0.5, tuple(images.shape), self.layout)
            recon = recon.clamp(0.0, 1.0).to(images.dtype)
        if self.gradient == "bpda" and images.requires_grad:
            # Straight-through: forward value is the reconstruction, backward is the identity.
            return images + (recon - images).detach()
        return recon

    def forward(self, images: Tensor) -> Tensor:
        """Masked-and-reconstructed images, (N, C, H, W) in [0, 1]; a fresh mask per call."""
        check_images(images)
        return self._estimate(images, self.draw_mask(images))


class MENet(nn.Module):
    """The defended model: ``classifier(preprocess(images))`` for images in [0, 1].

    Usable by any attack library that expects a torch model on [0, 1] inputs. Note that the
    preprocessing is randomised: evaluate with several draws (EOT) where that matters.
    """

    def __init__(self, classifier: nn.Module, preprocess: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.preprocess = preprocess

    def forward(self, images: Tensor) -> Tensor:
        """Logits (N, classes) for images (N, C, H, W) in [0, 1]."""
        return self.classifier(self.preprocess(images))
