"""Eigendecomposition of batches of small symmetric matrices, for the nuclear-norm solver.

torch's CPU ``linalg.eigh`` calls LAPACK once per matrix, which at the solver's sizes (8 to 64)
runs at a few GFLOP/s. ``_jacobi.c`` is a compiled cyclic Jacobi that rotates 16 matrices at a
time in SIMD lanes; from a start near diagonal form (the solver's tracked singular vectors) it
needs 2 to 3 sweeps. Measured on one core, 512 float32 matrices
(``benchmarks/estimation.py --eigh-only``, benchmarks/RESULTS.md): near diagonal form 1.4-6.7x
LAPACK's speed for n = 8 to 64; from a cold start 1.4-4.3x up to n = 40, about LAPACK's speed at
48 and slower beyond. So ``eigh`` uses it near diagonal form up to n = ``WARM_MAX_N`` and from a
cold start up to ``COLD_MAX_N``, and LAPACK otherwise, on a GPU, under autograd, or where the
extension was not built (``pip install`` builds it; a C compiler is needed). ``rayleigh_ritz``
runs a whole Rayleigh-Ritz step of the solver's tracked block in the same kernel (power step,
Householder QR, projection, Jacobi): on 170 Gram matrices, 1.1-1.5x the torch path with the
Jacobi eigh (m = 28 and 32, k = 8 to 24; 1.0-1.3x at m = 40 and 48, so up to
``RAYLEIGH_RITZ_MAX_M``), by saving LAPACK's per-matrix QR and a dozen calls.
``threshold_step`` goes one level up: the solver's whole threshold step for a batch of mixed
block sizes (up to m = 40, where both decompositions are compiled), the grouping by block size,
the decompositions and the soft-threshold filters, in one call instead of 25-30 torch calls
per block size (in a line profile at 32 x 96, p = 0.91, ``threshold_tracked`` fell from 636 to
502 ms, benchmarks/RESULTS.md);
``soft_threshold_filter`` is its filter on its own.

Accuracy: a matrix stops when its off-diagonal norm is at most ``4 eps ||A||_F`` (each
eigenvalue is then within that of the returned one), or when a sweep finds all its pairs below
the relative rotation test, which bounds the norm by ``4 sqrt(n) eps ||A||_F``; the rotations
add rounding of order ``n eps ||A||_F`` (measured worst in float64: eigenvalues 6.5 eps ||A||_F
for n = 8 to 32 and 4.5 at 64, reconstruction 15 at 64; the eigenvectors are orthonormal to
about 1.5 n eps, twice LAPACK's). Like LAPACK it reads the lower triangle only. A matrix that
does not converge in ``MAX_SWEEPS`` sweeps, or holds a NaN or Inf, is recomputed by LAPACK.
Each matrix's result does not depend on the batch it is in (converged matrices are left
unchanged while the others of their group go on); it is bitwise reproducible on one machine,
but the AVX-512 build fuses multiply-adds and the others do not, so CPUs may differ in rounding.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch
from torch import Tensor

from menet.estimation.spectral import soft_threshold_weights

try:  # a compiled submodule (no source file for the layering test to follow)
    _jacobi = importlib.import_module("menet.estimation._jacobi")
except ImportError:  # built without a C compiler: LAPACK everywhere
    _jacobi = None

WARM_MAX_N = 64  # near diagonal form: Jacobi up to this size
COLD_MAX_N = 40  # from a cold start
RAYLEIGH_RITZ_MAX_M = 48  # beyond, LAPACK's QR and MKL's products win (m = 64: 0.75-1.03x)
MAX_SWEEPS = 30  # cyclic Jacobi converges quadratically: 7-10 sweeps from a cold start (n = 8 to 64)


def compiled_available() -> bool:
    """True when the compiled Jacobi kernel was built and imports."""
    return _jacobi is not None


def compiled_matches_source() -> bool | None:
    """Whether the imported kernel was built from the ``_jacobi.c`` beside it (a hash that
    setup.py compiles in); None where no kernel imports or the source is not at hand (a wheel
    install ships the module only)."""
    source = Path(__file__).with_name("_jacobi.c")
    if _jacobi is None or not source.is_file():
        return None
    return getattr(_jacobi, "source_hash", None) == hashlib.sha256(source.read_bytes()).hexdigest()[:16]


def jacobi_eigh(h: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues ascending (B, n) and eigenvectors as columns (B, n, n) of the symmetric
    float32/float64 CPU matrices h (B, n, n), by the compiled Jacobi kernel (no autograd).
    Matrices it flags (not converged, or not finite) are recomputed by ``torch.linalg.eigh``."""
    if _jacobi is None:
        raise RuntimeError("menet.estimation._jacobi was not built (reinstall menet with a C compiler)")
    if h.dim() != 3 or h.shape[-1] != h.shape[-2] or h.device.type != "cpu" or h.shape[-1] > 1024:
        raise ValueError(f"jacobi_eigh needs CPU matrices of shape (B, n, n), n <= 1024, got {tuple(h.shape)} on {h.device}")
    if h.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"jacobi_eigh needs float32 or float64, got {h.dtype}")
    h = h.detach().contiguous()
    batch, n, _ = h.shape
    values = torch.empty(batch, n, dtype=h.dtype, device=h.device)
    vectors = torch.empty(batch, n, n, dtype=h.dtype, device=h.device)
    ok = torch.empty(batch, dtype=torch.uint8, device=h.device)
    if batch == 0 or n == 0:
        return values, vectors
    tol = 4.0 * torch.finfo(h.dtype).eps
    flagged = _jacobi.eigh(
        h.data_ptr(), values.data_ptr(), vectors.data_ptr(), ok.data_ptr(),
        batch, n, int(h.dtype == torch.float64), tol, MAX_SWEEPS,
    )
    if flagged:
        bad = (ok == 0).nonzero().flatten()
        values[bad], vectors[bad] = torch.linalg.eigh(h[bad])
    return values, vectors


def _kernel_takes(t: Tensor) -> bool:
    """The compiled kernel is built and takes t: a CPU float32/float64 tensor, no autograd."""
    return (
        _jacobi is not None and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
        and not (torch.is_grad_enabled() and t.requires_grad)
    )


def jacobi_runs(h: Tensor, *, near_diagonal: bool) -> bool:
    """Whether ``eigh(h, near_diagonal=...)`` uses the compiled Jacobi kernel."""
    limit = WARM_MAX_N if near_diagonal else COLD_MAX_N
    return _kernel_takes(h) and h.dim() == 3 and 1 <= h.shape[-1] <= limit


def rayleigh_ritz_runs(gram: Tensor, block: Tensor) -> bool:
    """Whether ``rayleigh_ritz`` takes gram (B, m, m) and block (B, m, k): the compiled kernel
    built, both CPU float32/float64 of one dtype, 1 <= k <= m <= RAYLEIGH_RITZ_MAX_M, no autograd."""
    return (
        _kernel_takes(gram) and _kernel_takes(block) and block.dtype == gram.dtype
        and gram.dim() == 3 and block.dim() == 3
        and gram.shape[-1] == gram.shape[-2] == block.shape[-2] and block.shape[0] == gram.shape[0]
        and 1 <= block.shape[-1] <= gram.shape[-1] <= RAYLEIGH_RITZ_MAX_M
    )


def rayleigh_ritz(gram: Tensor, block: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rayleigh-Ritz of symmetric gram (B, m, m) on span(gram @ block), block (B, m, k), in one
    compiled pass (``rayleigh_ritz_runs`` must hold): the power step, its columns reversed
    (largest Ritz value first), Householder QR, the k x k projection and its Jacobi eigh.
    Returns (Ritz values (B, k) ascending, Ritz vectors (B, m, k), failed (B,) bool: not
    finite, or Jacobi did not converge; the caller recomputes those)."""
    gram, block = gram.detach().contiguous(), block.detach().contiguous()
    batch, m, k = block.shape
    values = torch.empty(batch, k, dtype=gram.dtype, device=gram.device)
    vectors = torch.empty(batch, m, k, dtype=gram.dtype, device=gram.device)
    ok = torch.ones(batch, dtype=torch.uint8, device=gram.device)
    if batch:
        _jacobi.rayleigh_ritz(
            gram.data_ptr(), block.data_ptr(), values.data_ptr(), vectors.data_ptr(), ok.data_ptr(),
            batch, m, k, int(gram.dtype == torch.float64), 4.0 * torch.finfo(gram.dtype).eps, MAX_SWEEPS,
        )
    return values, vectors, ok == 0


def threshold_step_runs(gram: Tensor, basis: Tensor) -> bool:
    """Whether ``threshold_step`` takes gram and basis (B, m, m): the compiled kernel built, both
    CPU float32/float64 of one dtype, contiguous, 1 <= m <= min(COLD_MAX_N,
    RAYLEIGH_RITZ_MAX_M) (where both of its decompositions are the compiled ones), no autograd."""
    return (
        _kernel_takes(gram) and _kernel_takes(basis) and basis.dtype == gram.dtype
        and gram.dim() == 3 and gram.shape == basis.shape and gram.shape[-1] == gram.shape[-2]
        and 1 <= gram.shape[-1] <= min(COLD_MAX_N, RAYLEIGH_RITZ_MAX_M) and basis.is_contiguous()
    )


def threshold_step(
    gram: Tensor, basis: Tensor, sizes: Tensor, threshold: Tensor, margin: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """One threshold step of ``subspace_svt.threshold_tracked`` in one compiled call
    (``threshold_step_runs`` must hold). gram, basis (B, m, m); sizes (B,) int64 in [1, m];
    threshold (B, 1) or (B,). Matrix b is decomposed by ``rayleigh_ritz`` on the last k =
    sizes[b] columns of basis_b, or by ``jacobi_eigh`` for k = m; its k vectors replace those
    columns (basis is updated in place). Returns (filters (B, m, m): U diag(w) U^T as in
    ``soft_threshold_filter``; next (B,) int64: min(passed + margin, m), or m where k < m and
    every value passed; failed (B,) bool: not finite or not converged, and for those matrices
    nothing was written to their basis; their filters are NaN: the caller recomputes them)."""
    if not threshold_step_runs(gram, basis):
        raise ValueError(
            "threshold_step needs the compiled kernel and CPU float32/float64 gram and basis of one "
            f"dtype and shape (B, m, m), m <= {min(COLD_MAX_N, RAYLEIGH_RITZ_MAX_M)}, basis contiguous "
            f"(written in place), no autograd; got {tuple(gram.shape)} {gram.dtype} and "
            f"{tuple(basis.shape)} {basis.dtype}"
        )
    gram = gram.detach().contiguous()
    batch, m, _ = gram.shape
    sizes = sizes.to(torch.long).contiguous()
    t = threshold.detach().reshape(-1).to(gram.dtype).contiguous()
    if sizes.shape != (batch,) or t.shape != (batch,):
        raise ValueError(f"threshold_step: sizes and threshold need {batch} entries, got {tuple(sizes.shape)}, {tuple(t.shape)}")
    filters = torch.empty_like(gram)
    next_size = torch.empty(batch, dtype=torch.long, device=gram.device)
    ok = torch.ones(batch, dtype=torch.uint8, device=gram.device)
    if batch:
        _jacobi.threshold_step(
            gram.data_ptr(), basis.data_ptr(), sizes.data_ptr(), t.data_ptr(), filters.data_ptr(),
            next_size.data_ptr(), ok.data_ptr(), batch, m, int(gram.dtype == torch.float64),
            4.0 * torch.finfo(gram.dtype).eps, MAX_SWEEPS, margin,
        )
    failed = ok == 0
    if bool(failed.any()):
        filters[failed] = float("nan")  # never an uninitialised stand-in
    return filters, next_size, failed


def soft_threshold_filter(values: Tensor, vectors: Tensor, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
    """The soft-threshold filter of an eigendecomposition: (F (B, m, m), passed (B,) int64) with
    F = U diag(w) U^T, w = ``spectral.soft_threshold_weights(sqrt(max(values, 0)), threshold)``
    and passed the number of w > 0. values (B, k), vectors U (B, m, k), k <= m; threshold
    (B, 1), (B,) or a number. By the compiled kernel where it takes the tensors (terms of zero
    weight skipped: one pass instead of a weights pass, a count and a batched product), else
    by torch (the same sums, in another order)."""
    batch, m, k = vectors.shape
    if isinstance(threshold, Tensor):
        t = threshold.reshape(-1).to(values.dtype)
        t = (t.expand(batch) if t.numel() == 1 else t).contiguous()
    else:
        t = torch.full((batch,), threshold, dtype=values.dtype, device=values.device)
    if (
        _kernel_takes(values) and _kernel_takes(vectors) and values.dtype == vectors.dtype
        and values.shape == (batch, k) and t.shape == (batch,) and 1 <= k <= m <= 1024
    ):
        values, vectors = values.detach().contiguous(), vectors.detach().contiguous()
        filt = torch.empty(batch, m, m, dtype=values.dtype, device=values.device)
        passed = torch.empty(batch, dtype=torch.long, device=values.device)
        if batch:
            _jacobi.soft_threshold_filter(
                values.data_ptr(), vectors.data_ptr(), t.data_ptr(), filt.data_ptr(), passed.data_ptr(),
                batch, m, k, int(values.dtype == torch.float64),
            )
        return filt, passed
    w = soft_threshold_weights(values.clamp_min(0).sqrt(), t.view(-1, 1))
    return (vectors * w.unsqueeze(-2)) @ vectors.mT, (w > 0).sum(-1)


def eigh(h: Tensor, *, near_diagonal: bool) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of symmetric h (B, n, n), by the compiled Jacobi where it is the
    faster (see the module docstring); ``near_diagonal`` says h is close to diagonal form."""
    return jacobi_eigh(h) if jacobi_runs(h, near_diagonal=near_diagonal) else torch.linalg.eigh(h)
