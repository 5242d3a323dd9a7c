"""The paper's two adaptive white-box attacks on ME-Net (Yang et al., 2019, Section 3.4, Table 5).

Both are BPDA PGD (see ``menet.attacks.pgd``) on a ``MENet`` whose preprocessing is a
``MatrixEstimation``: its ``gradient`` mode gives the backward pass (``"bpda"``, the identity,
as in the paper). They differ from PGD in one hook each:

- ``approx_input`` changes where PGD starts: at the defense's own reconstruction of the
  clean image (one mask draw), projected on the eps-ball of the clean image.
- ``projected_bpda`` changes each step's gradient: projected on the span of the top-r
  singular vectors of the clean image, as the defense sees it (its layout, scaled to [-1, 1]).

The budget is always measured from the clean image, so the results compare with PGD's.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor, nn

from menet.attacks.base import check_number, project_linf, register_attack, uniform
from menet.attacks.pgd import PGD, GradTransform
from menet.defense import MatrixEstimation, MENet
from menet.estimation.layout import check_layout, images_to_matrices, matrices_to_images


def defense_of(model: nn.Module, attack: str) -> MatrixEstimation:
    """The ``MatrixEstimation`` of a ``MENet``; a TypeError naming ``attack`` for any other model."""
    if not isinstance(model, MENet) or not isinstance(model.preprocess, MatrixEstimation):
        preprocess = getattr(model, "preprocess", None)
        got = type(model).__name__ if not isinstance(model, MENet) else f"MENet with a {type(preprocess).__name__} preprocess"
        raise TypeError(
            f"attack {attack!r} uses the defense's own preprocessing, so it needs a MENet whose "
            f"preprocess is a MatrixEstimation (e.g. load_model(run) of an ME-Net run); got {got}"
        )
    return model.preprocess


# --- projected BPDA: the low-rank subspace of the clean image -------------------------------------

def top_singular_vectors(images: Tensor, layout: str, rank: int) -> tuple[Tensor, Tensor]:
    """(U_r, V_r): the top-``rank`` left and right singular vectors of each matrix the defense
    builds from ``images`` (N, C, H, W) in [0, 1], i.e. of ``images_to_matrices(2 x - 1, layout)``.

    Shapes: "concat" U_r (N, H, rank), V_r (N, C*W, rank); "separate" U_r (N, C, H, rank),
    V_r (N, C, W, rank) (each channel its own). One batched SVD, in float64 (it runs once per
    attack call, not per step), returned in ``images``' dtype. Where the rank-th and next
    singular values are equal (e.g. zero ones of an image of rank < ``rank``), the subspace is
    not unique and the SVD picks one of the equally valid ones.
    """
    check_layout(layout)
    check_number("rank", rank, low=1, integer=True)
    matrices = images_to_matrices(images.to(torch.float64) * 2.0 - 1.0, layout)
    m, n = matrices.shape[-2:]
    if rank > min(m, n):
        raise ValueError(f"rank {rank} exceeds the {min(m, n)} singular vectors of a {m} x {n} matrix ({layout!r} layout)")
    u, _, vh = torch.linalg.svd(matrices, full_matrices=False)  # singular values descending
    return u[..., :rank].to(images.dtype), vh[..., :rank, :].mT.to(images.dtype)


def project_low_rank(grad: Tensor, u: Tensor, v: Tensor, layout: str) -> Tensor:
    """U_r U_r^T G V_r V_r^T for each matrix G of ``grad`` (N, C, H, W) in ``layout``, back in
    image layout: the orthogonal projection (in the Frobenius inner product) onto matrices whose
    column space lies in span(U_r) and row space in span(V_r). ``u``, ``v`` from
    :func:`top_singular_vectors`. Computed as U_r ((U_r^T G) V_r) V_r^T: O(m n r) per matrix.
    """
    g = images_to_matrices(grad, layout)
    projected = u @ ((u.mT @ g) @ v) @ v.mT
    return matrices_to_images(projected, tuple(grad.shape), layout)


@register_attack
@dataclasses.dataclass(frozen=True)
class ProjectedBPDA(PGD):
    """Projected BPDA (Yang et al., 2019, Sec. 3.4): BPDA PGD whose gradients are projected on
    the span of the clean image's top-``rank`` singular vectors.

    For each clean image x the defense's matrices A = images_to_matrices(2 x - 1, layout) (its
    own layout: one H x (C*W) matrix for "concat", one H x W matrix per channel for "separate")
    are decomposed once, A = U S V^T. Each step's BPDA gradient G, in the same layout, becomes
    U_r U_r^T G V_r V_r^T before its sign is taken (see ``project_low_rank``); the step, the
    L-inf projection on the ball of x and [0, 1] are PGD's.
    rank: r, the number of singular vectors (default 5: the paper says "top few", and its
    Fig. 1 finds 90% of CIFAR-10 images of approximate rank < 5, i.e. the top 5 hold ~90% of
    an image's energy); must not exceed min(m, n). Everything else as PGD (eps 8/255,
    step_size 2/255, steps 40, random_start True: PGD's uniform start, which is not confined to
    the subspace, restarts 1, loss "ce", eot 1, keep_best True). Needs a MENet
    (``load_model(run, gradient="bpda")``); the paper ran 1000 steps.
    Example: ``ProjectedBPDA(rank=5, steps=1000)(menet_model, x, y, generator=g)``.
    """

    name = "projected_bpda"
    rank: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("rank", self.rank, low=1, integer=True)

    def grad_transform(self, model: nn.Module, images: Tensor) -> GradTransform | None:
        layout = defense_of(model, self.name).layout
        u, v = top_singular_vectors(images, layout, self.rank)
        return functools.partial(project_low_rank, u=u, v=v, layout=layout)


# --- approximate input: start from the defense's reconstruction -----------------------------------

@register_attack
@dataclasses.dataclass(frozen=True)
class ApproxInput(PGD):
    """Approximate-input attack (Yang et al., 2019, Sec. 3.4): BPDA PGD started from the
    defense's own reconstruction of the clean image.

    Start (per restart): draw one mask with the model's preprocess (``draw_mask``, from the
    defense's generator at its keep-probability p), reconstruct the clean image x with it
    (``MatrixEstimation.reconstruct``), and project that reconstruction R on the eps-ball of x
    and [0, 1]: x0 = clip(R, x - eps, x + eps) clipped to [0, 1]. The budget is always relative
    to x, never to R. With random_start, uniform noise in [-eps, eps] is added to x0 and the sum
    projected again on the ball of x (only this noise uses the attack's ``generator``). Then
    PGD's BPDA steps from x0 as usual. Each restart draws a new mask, so restarts start from
    different reconstructions.
    Settings as PGD except random_start (default False: the reconstruction is the start); eps
    8/255, step_size 2/255, steps 40, restarts 1, loss "ce", eot 1, keep_best True. Needs a
    MENet (``load_model(run, gradient="bpda")``); the paper ran 1000 steps.
    Example: ``ApproxInput(steps=1000)(menet_model, x, y)``.
    """

    name = "approx_input"
    random_start: bool = False

    def start(self, model: nn.Module, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """The clean images' reconstruction by the model's defense, within eps of the images."""
        defense = defense_of(model, self.name)
        with torch.no_grad():
            reconstruction = defense.reconstruct(images, defense.draw_mask(images))
        begin = project_linf(reconstruction, images, self.eps)
        if self.random_start and self.eps > 0:
            noise = uniform(tuple(images.shape), generator, images)
            begin = project_linf(begin + (2 * noise - 1) * self.eps, images, self.eps)
        return begin
