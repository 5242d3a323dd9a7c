"""Total-variation minimisation of the kept pixels (Guo et al., 2018), batched: Chambolle-Pock.

Guo, Rana, Cisse and van der Maaten ("Countering Adversarial Images using Input
Transformations", ICLR 2018) drop pixels at random and reconstruct the image as the "simplest"
one, in total variation, that stays close to the kept pixels. ME-Net's Table 3 compares with
it. For each matrix we solve

    min_Z  weight * TV(Z) + ||mask * (Z - a)||_F^2,

TV isotropic: the sum over entries of the length of the forward differences
(Z[i+1, j] - Z[i, j], Z[i, j+1] - Z[i, j]), a difference across the border counting as 0 (the
usual Neumann discretisation, and the one in Guo et al.'s released split-Bregman solver, which
runs with ``isotropic=True``).

Default weight. Guo et al.'s released code (facebookresearch/adversarial_image_defenses,
``lib/constants.py``: PIXEL_DROP_RATE = 0.5, TVM_WEIGHT = 0.03, TVM_METHOD = "bregman") drops
each pixel of each channel with probability 0.5 (keep p = 0.5: ``MatrixEstimation("tv",
p=0.5)``) and passes 1 / 0.03 as the weight of scikit-image's split-Bregman solver, whose
objective is TV(u) + (mu / 2) ||mask * (u - f)||^2, on [0, 1] images. That is
0.5 ||mask * (u - f)||^2 + 0.03 TV(u), i.e. ||mask * (u - f)||^2 + 0.06 TV(u) in the form
above. (The paper, as we recall it, writes min_z ||(1 - X) * (z - x)||_2 + lambda_TV TV_p(z)
with an unsquared norm and p = 2; we could not check its text, and follow the code.) The
estimators see matrices in [-1, 1], where the data term is 4 times and TV 2 times larger, so
the same reconstruction has weight 2 * 0.06 = 0.12, the default. Athalye et al.'s
re-implementation (obfuscated-gradients, ``defend_tv``: keep 0.5, lambda_tv = 0.03, Bregman
weight 2 / lambda_tv, anisotropic TV) minimises ||mask * (u - f)||^2 + 0.03 TV(u) on [0, 1],
half Guo's weight: ``weight=0.06`` here. Both ran only approximate solvers (Guo's stops when
an outer split-Bregman step changes the image by less than 0.01 RMS, at most 100 steps); we
solve to a certified 1e-4. The setting was tuned on ImageNet images (224 or 299 pixels), per
channel: for a TV reconstruction of each channel on its own, use the defense's
``layout="separate"``; "concat" also counts the jumps across the seams between the channels
laid side by side.

Algorithm. Halving the objective, F(Z) = g(Z) + lam ||grad Z||_{2,1} with
g(Z) = 0.5 ||mask * (Z - a)||^2 and lam = weight / 2. Its saddle-point form
min_Z max_{|P_ij| <= lam} g(Z) + <grad Z, P> is solved by the primal-dual method of Chambolle
and Pock (2011), over-relaxed by 1.8 (Condat, 2013): the prox of tau g is entrywise,
(V + tau mask a) / (1 + tau mask); that of the dual term projects each P_ij on the disc of
radius lam; ||grad||^2 <= 8, so tau sigma = 1/8. (Without strong convexity on the unobserved
entries there is no accelerated variant, and FISTA on the dual would face the constraint
div P = 0 there.) The balance of the two steps decides the speed: on Fashion-MNIST and random
matrices the best sigma / tau grew with weight / s (s the spread of the observed entries) up
to a point that grows with the matrix (the dual point P can only grow as large as the data
push it, about s times the extent of a flat region), hence
sqrt(8) sigma = min(2.5 weight / s, 0.2 sqrt(m n)) per matrix. On Fashion-MNIST at keep 0.5
this was within 3% of the best fixed balance (one sigma / tau for all images) for each weight
from 0.03 to 4. Unobserved entries start at the mean of the observed ones, so the iterates
shift with a constant added to ``a``.

Stopping rule: a certified duality gap, checked every ``CHECK_EVERY`` iterations. The
optimum lies in the box [lo, hi] of the observed values (clipping Z to it lowers neither
term), so for any dual point P, L(P) = min over lo <= Z <= hi of g(Z) - <div P, Z> is a lower
bound on the optimum F*, attained entry by entry in closed form. Each matrix stops once
F(Z) - L(P) <= tol * L(P) at its clipped iterate Z, which guarantees (F(Z) - F*) / F* <= tol.
The gap is summed as terms that are each >= 0 (see ``_objective_and_gap``), so float32 does
not lose it to cancellation. Why not a cheaper rule calibrated on the iterate change, as
nuclear_norm does: the true gap stops being above 1e-4 after about 2/3 of the iterations the
certificate needs, but at any fixed threshold of the iterate change or of the primal-dual
residuals the gap varied 50-fold across weights, masks and shapes. At the defaults (keep
0.5, weight 0.12, tol 1e-4) Fashion-MNIST matrices stop after 280 iterations on average
(median 270, at most 600 of 512 images); 32 x 96 CIFAR-shaped ones after 570 (at most 1,190);
at keep 0.3 the tail grows (Fashion-MNIST: mean 360, at most 1,370). The tests check the gap
against cvxpy/Clarabel.

Float32: the rounding of the entries adds up to about weight * m * n * 6e-8 * max|a| of TV,
which is negligible for images (the optimum is ~10 on a 28 x 28 image), but where the optimum
is that small (a few observed entries and a large weight, so a nearly constant Z) float32
cannot reach tol and runs to ``max_iters`` (logged); float64 can.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from menet.estimation._batching import (
    check_matrices,
    check_max_iters,
    check_positive,
    map_matrices,
    zero_fill,
)

log = logging.getLogger(__name__)

CHECK_EVERY = 10  # iterations between duality-gap checks (a check costs about one iteration)
RELAXATION = 1.8  # over-relaxation of each primal-dual step, in (0, 2)
_STEP_SLOPE, _STEP_CAP = 2.5, 0.2  # sqrt(8) sigma = min(_STEP_SLOPE weight / s, _STEP_CAP sqrt(m n))


def _gradient(z: Tensor, down: Tensor, right: Tensor) -> None:
    """Forward differences of z (B, m, n), written into ``down`` and ``right`` (B, m, n).

    A difference across the border is 0: the last row of ``down`` and the last column of
    ``right`` are never written and must hold zeros.
    """
    torch.sub(z[:, 1:, :], z[:, :-1, :], out=down[:, :-1, :])
    torch.sub(z[:, :, 1:], z[:, :, :-1], out=right[:, :, :-1])


def _divergence(down: Tensor, right: Tensor, out: Tensor) -> Tensor:
    """Minus the adjoint of ``_gradient``, written into ``out`` (all (B, m, n)).

    The last row of ``down`` and last column of ``right`` are taken as 0 (they never leave 0).
    """
    torch.add(down, right, out=out)
    out[:, 1:, :] -= down[:, :-1, :]
    out[:, :, 1:] -= right[:, :, :-1]
    return out


def _sum(x: Tensor) -> Tensor:
    """Sum over the last two dims: (B, m, n) -> (B,)."""
    return x.sum((-2, -1))


def tv_minimization(
    a: Tensor,
    mask: Tensor,
    *,
    weight: float = 0.12,
    tol: float = 1e-4,
    max_iters: int = 3000,
) -> Tensor:
    """Minimiser of weight * TV(Z) + ||mask * (Z - a)||_F^2 for each matrix (isotropic TV).

    a: float32/float64 (..., m, n); mask: bool, same shape, True = observed. The default
    weight 0.12 is Guo et al.'s TVM weight (0.03 on [0, 1] images, with half the squared
    error) on the [-1, 1] matrices the defense passes (see the module docstring). Each matrix
    stops on its own once its certified duality gap guarantees an objective within ``tol``
    (relative) of the optimum, or after ``max_iters`` (logged). In float32, keep ``tol`` at 1e-5
    or above (at 1e-6, 28 x 28 images ran to max_iters). Not differentiable: the output carries
    no gradient. Returns a tensor like ``a``.
    """
    check_matrices(a, mask)
    check_positive("weight", weight)
    check_positive("tol", tol)
    check_max_iters(max_iters)
    lam = weight / 2.0

    def estimate(a_chunk: Tensor, mask_chunk: Tensor) -> Tensor:
        count = _sum(mask_chunk).view(-1, 1, 1).to(a_chunk.dtype)
        observed = zero_fill(a_chunk, mask_chunk)
        mean = _sum(observed).view(-1, 1, 1) / count
        b = torch.where(mask_chunk, observed, mean)  # observed entries, their mean elsewhere
        del observed
        spread = (_sum((b - mean).square_()).view(-1, 1, 1) / count).sqrt_()  # of the observed
        inf = torch.tensor(math.inf, dtype=b.dtype, device=b.device)
        lo = torch.where(mask_chunk, b, inf).amin((-2, -1), keepdim=True)
        hi = torch.where(mask_chunk, b, -inf).amax((-2, -1), keepdim=True)
        # Step sizes per matrix (module docstring); a constant matrix (spread 0) gets the cap.
        cap = _STEP_CAP * math.sqrt(b.shape[-2] * b.shape[-1])
        ratio = (_STEP_SLOPE * weight / spread).clamp(1e-6, cap)
        tau, sigma = 1.0 / (math.sqrt(8.0) * ratio), ratio / math.sqrt(8.0)
        # prox of tau g at v: (v + tau b) / (1 + tau) where observed, v elsewhere.
        one, zero = torch.ones((), dtype=b.dtype, device=b.device), torch.zeros((), dtype=b.dtype, device=b.device)
        shrink = torch.where(mask_chunk, 1.0 / (1.0 + tau), one)
        tau_b = torch.where(mask_chunk, tau * b, zero)

        # State and buffers, all (B, m, n): the loop allocates nothing, so worker threads do
        # not fragment the allocator's arenas (mixed sizes and churn doubled the peak memory).
        # The dual point p = (p_down, p_right) lives on the forward differences; the border
        # row of p_down and column of p_right stay 0, like those of q, the next dual point.
        out = torch.empty_like(b)
        active = torch.arange(b.shape[0], device=b.device)
        z = b.clone()
        z_half, scratch = torch.empty_like(b), torch.empty_like(b)
        p_down, p_right, q_down, q_right = (torch.zeros_like(b) for _ in range(4))
        for it in range(1, max_iters + 1):
            divergence = _divergence(p_down, p_right, out=scratch)
            torch.addcmul(z, tau, divergence, out=z_half).add_(tau_b).mul_(shrink)
            # Dual step at the extrapolated point 2 z_half - z, then projection on the discs.
            _gradient(torch.lerp(z, z_half, 2.0, out=scratch), q_down, q_right)
            q_down.mul_(sigma).add_(p_down)
            q_right.mul_(sigma).add_(p_right)
            scale = torch.mul(q_down, q_down, out=scratch).addcmul_(q_right, q_right)
            scale.mul_(1.0 / (lam * lam)).clamp_min_(1.0).rsqrt_()
            q_down.mul_(scale)
            q_right.mul_(scale)
            last = it == max_iters
            if it % CHECK_EVERY == 0 or last:
                z_clip = torch.clamp(z_half, lo, hi)
                primal, gap = _objective_and_gap(z_clip, q_down, q_right, b, mask_chunk, lo, hi, lam)
                done = gap <= tol * (primal - gap)  # primal - gap is the lower bound on the optimum
                if last and not bool(done.all()):
                    log.info(
                        "tv_minimization: %d matrices reached max_iters=%d before tol=%g",
                        int((~done).sum()), max_iters, tol,
                    )
                    done = torch.ones_like(done)
                if bool(done.any()):
                    out[active[done]] = z_clip[done]
                    # A few tensors per statement, so that old and new copies of the whole
                    # state never coexist.
                    keep = ~done
                    active, lo, hi, tau, sigma = active[keep], lo[keep], hi[keep], tau[keep], sigma[keep]
                    b, mask_chunk, shrink, tau_b = b[keep], mask_chunk[keep], shrink[keep], tau_b[keep]
                    z, z_half, scratch = z[keep], z_half[keep], scratch[keep]
                    p_down, p_right, q_down, q_right = p_down[keep], p_right[keep], q_down[keep], q_right[keep]
                    if active.numel() == 0:
                        break
                del z_clip
            z.lerp_(z_half, RELAXATION)
            p_down.lerp_(q_down, RELAXATION)
            p_right.lerp_(q_right, RELAXATION)
        return out

    with torch.no_grad():
        return map_matrices(estimate, a.detach(), mask)


def _objective_and_gap(
    z: Tensor, q_down: Tensor, q_right: Tensor, b: Tensor, mask: Tensor, lo: Tensor, hi: Tensor,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """F(z) = 0.5 ||mask (z - b)||^2 + lam TV(z) and its gap to the bound from the dual point q.

    The bound is L(q) = min over lo <= Z <= hi of 0.5 ||mask (Z - b)||^2 - <div q, Z>, attained
    entry by entry (observed: clip(b + div q); unobserved: lo or hi). Using
    <div q, z> = -<q, grad z>, F(z) - L(q) is a sum of terms that are each >= 0:
    lam |grad z| - <q, grad z> per entry, and the excess of the entry's term of L at z over its
    minimum. Summing those, rather than subtracting two large sums, keeps float32 accurate
    when F is small next to the data. Returns two (B,) tensors.
    """
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    fit = _sum(torch.where(mask, (z - b).square_(), zero))  # unobserved z - b is arbitrary
    down, right = torch.zeros_like(z), torch.zeros_like(z)
    _gradient(z, down, right)
    length = torch.mul(down, down).addcmul_(right, right).sqrt_()
    primal = 0.5 * fit + lam * _sum(length)
    excess = length.mul_(lam).addcmul_(q_down, down, value=-1.0).addcmul_(q_right, right, value=-1.0)
    gap = _sum(excess)
    del excess, length
    d = _divergence(q_down, q_right, out=down)
    # Observed: 0.5 (Z - b)^2 - d Z at z minus at best = (z - best) (0.5 (z + best) - b - d).
    best = (b + d).clamp_(lo, hi)
    observed = torch.add(z, best).mul_(0.5).sub_(b).sub_(d).mul_(z - best)
    # Unobserved: -d Z at z minus its minimum over [lo, hi]: d (hi - z) if d > 0, d (lo - z) if not.
    unobserved = torch.sub(hi, z).mul_(d.clamp_min(0.0)).addcmul_(d.clamp_max_(0.0), lo - z)  # d is spent
    return primal, gap + _sum(torch.where(mask, observed, unobserved))
