"""The exact (differentiated) USVT gradient: finite where singular values repeat, and right.

torch's eigh backward divides by differences of eigenvalues, so differentiating USVT through
it gave NaN (or values like 1e44) for blank, constant, identical-row and zero-padded images.
Where the estimate is differentiable, its gradient is checked against finite differences
(gradcheck) and against autograd through an SVD written here, independently of menet.
"""

from __future__ import annotations

import pytest
import torch
from conftest import bernoulli_mask, low_rank_plus_noise

from menet.defense import MatrixEstimation
from menet.estimation import usvt
from menet.estimation.spectral import soft_threshold_weights, spectral_filter

# A reconstruction is a projection rescaled by 1 / p, so where its derivative exists it is of
# order 1 / p; the old eigh backward gave 1e6 (float32) to 1e44 (float64) on these images.
GRADIENT_BOUND = 1e3


def degenerate_images(kind: str, dtype: torch.dtype) -> torch.Tensor:
    """(2, 3, 8, 8) images in [0, 1] whose matrices have repeated (zero) singular values."""
    g = torch.Generator().manual_seed(0)
    if kind == "blank":
        return torch.zeros(2, 3, 8, 8, dtype=dtype)
    if kind == "constant":
        return torch.full((2, 3, 8, 8), 0.7, dtype=dtype)
    if kind == "identical_rows":
        return torch.rand(2, 3, 1, 8, generator=g, dtype=dtype).expand(2, 3, 8, 8).clone()
    if kind == "zero_padded":  # a 4 x 4 image padded by 2 pixels, as random crops do
        images = torch.zeros(2, 3, 8, 8, dtype=dtype)
        images[..., 2:6, 2:6] = torch.rand(2, 3, 4, 4, generator=g, dtype=dtype)
        return images
    raise ValueError(kind)


KINDS = ["blank", "constant", "identical_rows", "zero_padded"]
RULES = [{}, {"rank": 1}, {"rank": 5}, {"rank_fraction": None}]  # {}: rank_fraction=0.8


@pytest.mark.parametrize("rule", RULES, ids=["fraction0.8", "rank1", "rank5", "threshold"])
@pytest.mark.parametrize("p", [1.0, 0.5])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_images_give_finite_bounded_gradients(kind, p, rule, dtype):
    x = degenerate_images(kind, dtype).requires_grad_(True)
    me = MatrixEstimation("usvt", p=p, gradient="exact", generator=torch.Generator().manual_seed(1), **rule)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (grad,) = torch.autograd.grad((me(x) * upstream).sum(), x)
    assert torch.isfinite(grad).all(), f"non-finite gradient for {kind} images at p={p}"
    assert grad.abs().max() < GRADIENT_BOUND, f"gradient {grad.abs().max():.3g} for {kind} images at p={p}"


def degenerate_matrices(kind: str) -> torch.Tensor:
    """(2, 6, 9) float64 matrices in [-1, 1] of rank 1 (constant, identical rows) or 3 (padded),
    away from the clip range, so that the unclipped estimate is smooth for rank <= that rank."""
    g = torch.Generator().manual_seed(3)
    if kind == "constant":
        return torch.full((2, 6, 9), -0.6, dtype=torch.float64)
    if kind == "identical_rows":
        return (torch.rand(2, 1, 9, generator=g, dtype=torch.float64) - 0.5).expand(2, 6, 9).clone()
    if kind == "zero_padded":  # two padding rows (equal) plus two random rows: rank 3
        a = torch.full((2, 6, 9), -0.5, dtype=torch.float64)
        a[:, 2:4] = torch.rand(2, 2, 9, generator=g, dtype=torch.float64) - 0.5
        return a
    raise ValueError(kind)


@pytest.mark.parametrize(("kind", "rank"), [("constant", 1), ("identical_rows", 1), ("zero_padded", 1), ("zero_padded", 3)])
@pytest.mark.parametrize("transpose", [False, True])
def test_gradient_at_repeated_singular_values_matches_finite_differences(kind, rank, transpose):
    # The kept singular values are well apart from the dropped (zero) ones, so the estimate is
    # differentiable here although the dropped ones repeat: gradcheck must pass, at p = 1.
    a = degenerate_matrices(kind)
    a = (a.mT.contiguous() if transpose else a).requires_grad_(True)
    mask = torch.ones(a.shape, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: usvt(x, mask, rank=rank, clip=None), (a,))


def svd_usvt(
    a: torch.Tensor, mask: torch.Tensor, k: int | None, eta: float = 0.01, clip: tuple[float, float] | None = (-1.0, 1.0)
) -> torch.Tensor:
    """USVT through torch.linalg.svd (autograd's SVD backward): the reference for gradients."""
    m, n = a.shape[-2:]
    p_hat = mask.flatten(-2).double().mean(-1).to(a.dtype)  # (B,)
    u, s, vh = torch.linalg.svd(torch.where(mask, a, torch.zeros_like(a)), full_matrices=False)
    if k is None:
        keep = (s.detach() >= ((2.0 + eta) * torch.sqrt(max(m, n) * p_hat)).unsqueeze(-1)).to(a.dtype)
    else:
        keep = torch.zeros_like(s)
        keep[..., :k] = 1.0  # svd's order is descending
    estimate = ((u * (s * keep).unsqueeze(-2)) @ vh) / p_hat.view(-1, 1, 1)
    return estimate if clip is None else estimate.clamp(*clip)


@pytest.mark.parametrize(("shape", "scale", "rule", "k"), [
    ((3, 6, 9), 0.5, {"rank": 2}, 2),
    ((3, 9, 6), 0.5, {"rank": 4}, 4),
    ((3, 6, 9), 0.5, {"rank_fraction": 0.5}, 3),
    # Chatterjee's threshold (5.6 here) keeps 2 and 1 singular values, none within 0.4 of it.
    ((2, 10, 8), 3.0, {"clip": None}, None),
])
def test_gradient_matches_svd_reference_and_gradcheck(shape, scale, rule, k):
    batch, m, n = shape
    a = torch.from_numpy(scale * low_rank_plus_noise(batch, m, n, rank=2, noise=0.05, seed=4)).requires_grad_(True)
    mask = torch.from_numpy(bernoulli_mask(a.shape, 0.8, seed=5))
    got = usvt(a, mask, **rule)
    expected = svd_usvt(a, mask, k, clip=rule.get("clip", (-1.0, 1.0)))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    upstream = torch.randn(a.shape, generator=torch.Generator().manual_seed(6), dtype=a.dtype)
    (grad,) = torch.autograd.grad((got * upstream).sum(), a)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), a)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-9)
    assert torch.autograd.gradcheck(lambda x: usvt(x, mask, **rule), (a,))


def test_defense_gradient_matches_svd_reference():
    # Through MatrixEstimation (layout, scaling to [-1, 1], clipping), float64, p = 0.7.
    x = (0.5 + 0.1 * torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    x.requires_grad_(True)
    me = MatrixEstimation("usvt", p=0.7, gradient="exact", rank=3, generator=torch.Generator().manual_seed(8))
    mask = me.draw_mask(x)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    (grad,) = torch.autograd.grad((me.reconstruct(x, mask) * upstream).sum(), x)
    # concat layout: (N, C, H, W) -> one H x (C W) matrix per image, the mask repeated per channel.
    matrices = (x * 2 - 1).permute(0, 2, 1, 3).reshape(2, 6, 15)
    full_mask = mask.expand(matrices.shape)
    recon = ((svd_usvt(matrices, full_mask, 3) + 1) / 2).reshape(2, 6, 3, 5).permute(0, 2, 1, 3).clamp(0, 1)
    (expected,) = torch.autograd.grad((recon * upstream).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=1e-7, atol=1e-9)
    assert torch.autograd.gradcheck(lambda inp: me.reconstruct(inp, mask), (x,), fast_mode=True)


def test_smooth_filter_gradient_where_all_singular_values_tie():
    # x = 0.9 Q with orthonormal rows: all singular values equal 0.9, so every eigenvalue of the
    # Gram matrix is tied; soft thresholding is smooth there (derivative f'(lambda) on the whole
    # eigenspace) and must match finite differences. (The sorted singular values are not
    # differentiable at a tie; their gradient is checked at a random input.)
    q, _ = torch.linalg.qr(torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64))
    x = (0.9 * q.mT).requires_grad_(True)  # (2, 4, 7)
    tau = torch.tensor([[0.3]], dtype=torch.float64)

    def shrink(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return spectral_filter(inp, lambda s: soft_threshold_weights(s, tau))

    assert torch.autograd.gradcheck(lambda inp: shrink(inp)[0], (x,))
    random = torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert torch.autograd.gradcheck(shrink, (random.requires_grad_(True),))
