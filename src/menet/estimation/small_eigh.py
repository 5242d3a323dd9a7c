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


def eigh(h: Tensor, *, near_diagonal: bool) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of symmetric h (B, n, n), by the compiled Jacobi where it is the
    faster (see the module docstring); ``near_diagonal`` says h is close to diagonal form."""
    return jacobi_eigh(h) if jacobi_runs(h, near_diagonal=near_diagonal) else torch.linalg.eigh(h)
