"""Nuclear-norm minimisation for matrix completion, batched: ADMM, then FISTA to the stop.

Solves, for each matrix, min_X mu * ||X||_* + ||mask * (X - a)||_F^2 (the problem the
original ME-Net code passed to cvxpy/SCS per image). This objective is twice
F(X) = 0.5 ||mask * (X - a)||^2 + tau ||X||_* with tau = mu / 2.

Two phases, each matrix on its own:
1. ADMM on the split X = Y (Y carries the data term, X the nuclear norm), started from the
   observed entries with each unobserved one set to the mean of its observed neighbours, where
   that mean predicts the observed entries well (``_neighbour_fill``; it reads observed entries
   only). On images, which are smooth, it saves 0.4 to 7 steps against the zero-filled start;
   on noise or unstructured low-rank matrices it cost up to 2x the steps, so they keep the
   zero-filled start (benchmarks/RESULTS.md). The penalty is
   rho = ADMM_RHO * (observed fraction) * t, t = tau / max|a_observed|, and over-relaxation
   RELAX. The penalty depends on the data only through t, so scaling a and mu up by the same
   factor (the same problem, scaled) takes the same steps (scaling down tightens the stopping
   threshold below, by design); a penalty of 0.7 tau p (the first version) hit the cap of 60
   steps at every matrix of data in [0, 255] with mu scaled alike. At mu = 1 on data whose
   observed entries reach +-1 (images in [-1, 1]) rho is 0.425 * (observed fraction).
   Measured on real images it needs about a third of FISTA's iterations (32 x 96, p = 0.5: 12
   against 37 with gradient restart and 58 with function restart), and its thresholds are at
   tau / rho, well above FISTA's, so its iterates have low rank: its singular value
   thresholds use a tracked block of singular vectors (``subspace_svt``), a k x k eigh
   instead of an m x m one, on the CPU by a compiled batched Jacobi eigensolver
   (``small_eigh``; 3.6-6.7x LAPACK on these matrices, benchmarks/RESULTS.md). It stops when
   its relative primal and dual residuals are below SWITCH_FACTOR times the final threshold.
   Its steps may be inexact (a tracked block can miss a direction for a step): that costs
   iterations, never accuracy, because
2. FISTA with function-value restart (step 1: the smooth part has a 1-Lipschitz gradient)
   starts from ADMM's point, with exact thresholds (eigh of the full Gram matrix, also by the
   compiled Jacobi up to 40 x 40, ``subspace_svt.threshold_full``), and stops by the rule
   below; usually its first step already does.
A matrix whose ADMM reaches MAX_ADMM_ITERS unconverged (small p or small mu) gives FISTA the
zero-filled data instead, the previous solver's start: an unconverged ADMM point can sit far
from the optimum along directions the data term does not see (unobserved entries), and one
small FISTA step from it already met the stopping rule at gaps of 1e-4 to 5e-2 (12 x 10,
p = 0.2, mu = 0.58, entries up to 2.8; constant 8 x 40 matrices at p = 0.1).

Stopping rule: a matrix stops when the relative change of its FISTA iterate,
||X_k - X_{k-1}||_F / ||X_k||_F, falls below ``tol``. A certified duality gap (dual point from
the scaled residual) turned out to need 2-3x more iterations than the objective does, so we
use this cheap rule, calibrated on real and synthetic images: at the default tol = 2e-4 the
objective is within 1e-4 (relative) of the optimum; the tests check that against cvxpy.
A small mu weakens the nuclear-norm term, so FISTA creeps along flat directions and a small
step no longer means a small gap (mu = 0.06 stopped at a 3e-4 gap): the threshold is
therefore tol * min(1, mu, mu / max|a_observed|) per matrix (scaling the data by c acts as
dividing mu by c; data in [-1, 1] keeps tol * min(1, mu)). That holds the 1e-4 gap for
mu / max|a| in [0.05, 5] in the property test (random matrices up to 10 x 10, p >= 0.1) and
on real images at mu >= 0.3 and p >= 0.2 (the tests); outside it nothing is promised. Reviews
found a 1.4e-4 gap on 11 x 13 random matrices at p = 0.125, mu = 0.125, and gaps of 3e-4 to
4.4e-4 on 28 x 28 and 32 x 96 images at mu = 0.05, p = 0.1, also with max_iters = 5000 (the
previous solver gives the same): small mu at small p needs a smaller tol.

Every operation on a matrix depends on that matrix alone (block sizes are per matrix, work is
grouped by size), so a result does not depend on the batch it is computed in, up to rounding:
MKL's batched products and eigh may round a matrix differently in another batch at some sizes
(9 x 9, 31 x 27: 1.5e-6 relative in float32, 3e-15 in float64; bitwise equal at 28 x 28 and
32 x 96, review of 2026-12-01). The unobserved entries of ``a`` are never read (zero-filled
before any arithmetic).
"""

from __future__ import annotations

import logging
import threading

import torch
from torch import Tensor

from menet.estimation._batching import (
    check_matrices,
    check_max_iters,
    check_positive,
    map_matrices,
    zero_fill,
)
from menet.estimation.subspace_svt import full_sizes, step_flops, threshold_full, threshold_tracked

log = logging.getLogger(__name__)

# ADMM's penalty is ADMM_RHO * (observed fraction) * tau / max|a| (see the module docstring);
# ADMM leaves for FISTA once its relative residuals are below SWITCH_FACTOR times FISTA's
# threshold, or after MAX_ADMM_ITERS. ADMM_RHO and RELAX were chosen on a grid of
# {0.7, 0.85, 1.0} x {1.5, 1.6, 1.7}, on images at mu = 1 (benchmarks/RESULTS.md).
ADMM_RHO = 0.85
SWITCH_FACTOR = 5.0
MAX_ADMM_ITERS = 60
RELAX = 1.6
# ADMM starts from the neighbour fill where it predicts observed entries with a squared error
# below this fraction of their variance (``_neighbour_fill``).
SMOOTH_RATIO = 0.5


def _sum_sq(x: Tensor) -> Tensor:
    """Squared Frobenius norm of each matrix of x (B, m, n) -> (B,)."""
    return torch.linalg.vector_norm(x, dim=(-2, -1)).square()


def nuclear_norm(
    a: Tensor,
    mask: Tensor,
    *,
    mu: float = 1.0,
    tol: float = 2e-4,
    max_iters: int = 500,
) -> Tensor:
    """Minimiser of mu * ||X||_* + ||mask * (X - a)||_F^2 for each matrix.

    a: float32/float64 (..., m, n); mask: bool, same shape, True = observed. Each matrix stops
    on its own when the relative change of its iterate falls below ``tol * min(1, mu, mu / max|a|)``
    (default tol 2e-4: relative objective gap below 1e-4), or after ``max_iters`` (logged);
    the iterations before it are ADMM's (see the module docstring). In float32, keep ``tol``
    above about 1e-6. Not differentiable: the output carries no gradient. Returns a tensor like
    ``a``.
    """
    return nuclear_norm_with_stats(a, mask, mu=mu, tol=tol, max_iters=max_iters)[0]


def nuclear_norm_with_stats(
    a: Tensor, mask: Tensor, *, mu: float = 1.0, tol: float = 2e-4, max_iters: int = 500,
) -> tuple[Tensor, dict[str, float]]:
    """``nuclear_norm`` and its work: {"matrices", "admm_iterations" and "iterations" (FISTA's),
    each summed over the matrices, "flops" (``subspace_svt.step_flops`` of every threshold)}."""
    check_matrices(a, mask)
    check_positive("mu", mu)
    check_positive("tol", tol)
    check_max_iters(max_iters)
    stats = {"matrices": 0, "iterations": 0, "admm_iterations": 0, "flops": 0.0}
    lock = threading.Lock()

    def estimate(a_chunk: Tensor, mask_chunk: Tensor) -> Tensor:
        out, chunk_stats = _solve(a_chunk, mask_chunk, mu, max_iters, tol)
        with lock:
            for key, value in chunk_stats.items():
                stats[key] += value
        return out

    with torch.no_grad():
        out = map_matrices(estimate, a.detach(), mask)
    return out, stats


def _solve(a: Tensor, mask: Tensor, mu: float, max_iters: int, tol: float) -> tuple[Tensor, dict[str, float]]:
    """ADMM to near the optimum, then FISTA to the stopping rule, on one chunk (B, m, n)."""
    transpose = a.shape[-2] > a.shape[-1]  # ADMM's blocks of singular vectors want m <= n
    if transpose:
        a, mask = a.mT, mask.mT
    b = zero_fill(a, mask).contiguous()
    obs = mask.to(b.dtype).contiguous()
    stats = {"matrices": b.shape[0], "iterations": 0, "admm_iterations": 0, "flops": 0.0}
    tau = mu / 2.0
    # The stop of the module docstring, per matrix: tol * min(1, mu, mu / max|a|) (scaling the
    # data by c acts as dividing mu by c; data in [-1, 1] keeps tol * min(1, mu)).
    amax = b.abs().amax((-2, -1))  # (B,)
    threshold = tol * (mu / amax).clamp(max=min(1.0, mu))
    start, converged = _admm(b, obs, tau, _penalty_scale(tau, amax), threshold, max_iters, stats)
    if not bool(converged.all()):
        start[~converged] = b[~converged]  # see the module docstring
    out = _fista(b, obs, start, tau, threshold, max_iters, tol, stats)
    return (out.mT if transpose else out), stats


def _penalty_scale(tau: float, amax: Tensor) -> Tensor:
    """t = tau / max|a_observed| (B, 1, 1) from ``amax`` (B,), bounded to [1e-6, 1e6] (an
    all-zero matrix has no scale; any finite penalty solves it)."""
    t = tau / amax.clamp_min(torch.finfo(amax.dtype).tiny)
    return t.clamp(1e-6, 1e6).view(-1, 1, 1)


def _box_sums(t: Tensor) -> Tensor:
    """Sum of each entry's 3 x 3 box, zero outside the matrix (B, m, n); two new tensors at
    most (a rows pass, then the columns pass in place on a copy)."""
    rows = t.clone()
    rows[..., 1:, :] += t[..., :-1, :]
    rows[..., :-1, :] += t[..., 1:, :]
    sums = rows.clone()
    sums[..., 1:] += rows[..., :-1]
    sums[..., :-1] += rows[..., 1:]
    return sums


def _neighbour_fill(b: Tensor, obs: Tensor) -> Tensor:
    """ADMM's start (B, m, n), a new tensor: the observed entries, and each unobserved one the
    mean of the observed entries among its 8 neighbours (0 where none is observed), where that
    mean predicts the observed entries well: its squared error on them below SMOOTH_RATIO times
    their variance (images). Elsewhere (noise, unstructured low rank) the zero-filled data, on
    which ADMM needs fewer steps there. It reads observed entries only. Its temporaries are a few
    chunk-sized tensors, computed in place (the chunk bounds the memory of a call)."""
    sums, counts = _box_sums(b), _box_sums(obs)
    # At an observed entry the box holds the entry itself: its neighbours' mean leaves it out.
    others = counts - obs
    scored = obs * (others > 0)
    miss = (sums - b).div_(others.clamp_min_(1.0)).sub_(b).square_().mul_(scored)
    error = miss.sum((-2, -1))
    observed = obs.sum((-2, -1))
    mean = b.sum((-2, -1), keepdim=True) / observed.view(-1, 1, 1)
    spread = torch.sub(b, mean, out=miss).square_().mul_(obs).sum((-2, -1))
    smooth = error * observed < SMOOTH_RATIO * spread * scored.sum((-2, -1))
    del others, scored, miss
    # fill = b + (1 - obs) * sums / max(counts, 1): b at observed entries (b is 0 elsewhere).
    fill = sums.div_(counts.clamp_min_(1.0))
    fill.addcmul_(fill, obs, value=-1.0).add_(b)
    rough = ~smooth
    if bool(rough.any()):
        fill[rough] = b[rough]
    return fill


def _admm(
    b: Tensor, obs: Tensor, tau: float, penalty_scale: Tensor, threshold: Tensor, max_iters: int,
    stats: dict[str, float],
) -> tuple[Tensor, Tensor]:
    """ADMM on min tau ||X||_* + 0.5 ||obs * (Y - a)||^2 s.t. X = Y (scaled dual L), per matrix
    until its primal and dual residuals fall below SWITCH_FACTOR * threshold (relative), at most
    min(max_iters, MAX_ADMM_ITERS) steps. b, obs: (B, m, n); penalty_scale (B, 1, 1) from
    ``_penalty_scale``; threshold (B,). Returns its points
    (B, m, n) and (B,) bool: True where the residuals met the bound."""
    batch = b.shape[0]
    x = _neighbour_fill(b, obs)  # first: its temporaries are gone before ADMM's own state exists
    out = torch.empty_like(b)
    converged = torch.zeros(batch, dtype=torch.bool, device=b.device)
    active = torch.arange(batch, device=b.device)
    rho = ADMM_RHO * obs.mean((-2, -1), keepdim=True) * penalty_scale  # (B, 1, 1)
    # Y = argmin 0.5 ||obs * (Y - a)||^2 + rho / 2 ||Y - (X + L)||^2 = data + weight * (X + L).
    weight = rho / (obs + rho)
    data = b / (obs + rho)
    # The threshold's input v = relaxed - L carries the dual too: L = x - v after each step, so
    # x + L = 2 x - v, and the next input is relaxed - L = v + RELAX * (y - x).
    v = x.clone()  # L = 0
    limit = SWITCH_FACTOR * threshold
    basis, size = None, full_sizes(batch, b.shape[-2], b.device)
    for it in range(1, min(max_iters, MAX_ADMM_ITERS) + 1):
        y = torch.addcmul(data, weight, torch.lerp(v, x, 2.0))
        # Over-relaxation (Eckstein and Bertsekas, 1992): relaxed = x + RELAX * (y - x).
        v.add_(y, alpha=RELAX).sub_(x, alpha=RELAX)
        x_new, basis, size, flops = threshold_tracked(v, tau / rho.view(-1, 1), basis, size)
        stats["flops"] += flops
        # Residuals in place: y and the old x are not needed again (fewer live temporaries).
        primal_sq = _sum_sq(y.sub_(x_new))
        change_sq = _sum_sq(x.sub_(x_new))
        del y
        x = x_new
        stats["admm_iterations"] += x.shape[0]
        scale = _sum_sq(x) * (limit * limit)
        done = (primal_sq <= scale) & (change_sq <= scale)
        converged[active] = done
        if it == min(max_iters, MAX_ADMM_ITERS):
            done = torch.ones_like(done)
        if bool(done.any()):
            out[active[done]] = x[done]
            keep = ~done
            active, weight, data, x, v, rho, basis, size, limit = (
                active[keep], weight[keep], data[keep], x[keep], v[keep], rho[keep], basis[keep], size[keep],
                limit[keep],
            )
            if active.numel() == 0:
                break
    return out, converged


def _fista(
    b: Tensor, obs: Tensor, start: Tensor, tau: float, threshold: Tensor, max_iters: int, tol: float,
    stats: dict[str, float],
) -> Tensor:
    """FISTA with function-value restart from ``start`` until the relative change of the iterate
    falls below ``threshold`` (B,)."""
    observed = obs.bool()
    out = torch.empty_like(b)
    active = torch.arange(b.shape[0], device=b.device)
    x = y = start
    t = torch.ones(b.shape[0], 1, 1, dtype=b.dtype, device=b.device)
    f_prev = torch.full((b.shape[0],), float("inf"), dtype=b.dtype, device=b.device)
    for it in range(1, max_iters + 1):
        # y - grad, with grad = mask * (y - a): a where observed, y elsewhere (b is a there).
        x_new, s = threshold_full(torch.where(observed, b, y), tau)
        del y
        f = 0.5 * _sum_sq(torch.addcmul(b, obs, x_new, value=-1.0)) + tau * (s - tau).clamp_min(0).sum(-1)
        step = x_new - x
        done = _sum_sq(step) <= threshold * threshold * _sum_sq(x_new)
        # Function-value restart (O'Donoghue and Candes, 2015): drop momentum on ascent.
        t = torch.where((f > f_prev).view(-1, 1, 1), torch.ones_like(t), t)
        t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        y = step.mul_((t - 1.0) / t_next).add_(x_new)
        x, t, f_prev = x_new, t_next, f
        stats["iterations"] += x.shape[0]
        stats["flops"] += x.shape[0] * step_flops(*sorted(x.shape[-2:]), min(x.shape[-2:]))
        if it == max_iters:
            if not bool(done.all()):
                log.info(
                    "nuclear_norm: %d matrices reached max_iters=%d before tol=%g",
                    int((~done).sum()), max_iters, tol,
                )
            done = torch.ones_like(done)
        if bool(done.any()):
            out[active[done]] = x[done]
            keep = ~done
            active, b, obs, observed, x, y, t, f_prev, threshold = (
                active[keep], b[keep], obs[keep], observed[keep], x[keep], y[keep],
                t[keep], f_prev[keep], threshold[keep],
            )
            if active.numel() == 0:
                break
    return out
