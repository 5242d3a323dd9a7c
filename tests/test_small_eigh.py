"""The compiled batched Jacobi eigensolver against LAPACK in float64 (an independent reference)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

small_eigh = importlib.import_module("menet.estimation.small_eigh")
nn_module = importlib.import_module("menet.estimation.nuclear_norm")

# Without a C compiler the package installs without the kernel; then only the next test fails
# (loudly: the README's install builds it), and the kernel's own tests cannot run.
needs_kernel = pytest.mark.skipif(not small_eigh.compiled_available(), reason="menet.estimation._jacobi not built")


def _symmetric(batch: int, n: int, seed: int, dtype=torch.float64, kind: str = "random") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gram":  # positive semidefinite, as the solver's Gram matrices, with rank below n
        x = torch.randn(batch, n, max(1, n // 2), generator=g, dtype=torch.float64)
        a = x @ x.mT
    elif kind == "near_diagonal":  # a rotated eigenbasis perturbed slightly, as after a solver step
        x = torch.randn(batch, n, 2 * n, generator=g, dtype=torch.float64)
        a = x @ x.mT
        _, v = torch.linalg.eigh(a)
        q = torch.linalg.qr(v + 1e-2 * torch.randn(v.shape, generator=g, dtype=torch.float64)).Q
        a = q.mT @ a @ q
    else:
        x = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
        a = x + x.mT
    return (0.5 * (a + a.mT)).to(dtype)


def _check_against_lapack(a: torch.Tensor) -> None:
    values, vectors = small_eigh.jacobi_eigh(a)
    assert values.dtype == a.dtype and vectors.dtype == a.dtype
    reference = torch.linalg.eigh(a.double())[0]
    eps = torch.finfo(a.dtype).eps
    n = a.shape[-1]
    norm = torch.linalg.matrix_norm(a.double()).view(-1, 1)  # Frobenius
    # The stopping rules bound the eigenvalue error by 4 sqrt(n) eps ||A||_F in exact
    # arithmetic; the rotations add rounding of order n eps (measured worst: 6.5 eps ||A||_F).
    bound = (8 * n**0.5 + n) * eps
    assert ((values.double() - reference).abs() <= bound * norm + 1e-300).all()
    assert (values[:, 1:] >= values[:, :-1]).all()  # ascending, as torch returns them
    v = vectors.double()
    eye = torch.eye(n, dtype=torch.float64)
    assert (v.mT @ v - eye).abs().max() <= 4 * n * eps  # measured: about 1.5 n eps
    rebuilt = (v * values.double().unsqueeze(-2)) @ v.mT
    assert ((rebuilt - a.double()).abs().amax((-2, -1)) <= bound * norm.view(-1)).all()


def test_compiled_kernel_is_built():
    # pip install (make test) compiles it; a silent build failure would leave the solver on LAPACK.
    assert small_eigh.compiled_available(), "menet.estimation._jacobi is missing: the C extension did not build"
    # An edited _jacobi.c that fails to compile leaves the old module in place (the extension is
    # optional): the hash it was built with then differs from the source's.
    assert small_eigh.compiled_matches_source() is not False, "menet.estimation._jacobi is stale: rebuild (pip install -e .)"


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["random", "gram", "near_diagonal"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 17, 28, 33, 40, 64])
def test_matches_lapack(dtype, kind, n):
    # 37 matrices: two full groups of 16 lanes and a partial one.
    _check_against_lapack(_symmetric(37, n, seed=n, dtype=dtype, kind=kind))


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 24),
    batch=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-30, 1e-20, 1e-3, 1.0, 1e4, 1e15, 1e25]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_matches_lapack_property(n, batch, seed, scale, dtype):
    _check_against_lapack(_symmetric(batch, n, seed, dtype=dtype, kind="random") * scale)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_matrices(dtype):
    n = 6
    zero = torch.zeros(n, n, dtype=dtype)
    eye = torch.eye(n, dtype=dtype)
    diagonal = torch.diag(torch.tensor([3.0, -1.0, 2.0, 2.0, 0.0, 5.0], dtype=dtype))
    rank_one = torch.outer(torch.arange(1.0, n + 1, dtype=dtype), torch.arange(1.0, n + 1, dtype=dtype))
    repeated = torch.ones(n, n, dtype=dtype) + 4 * eye  # eigenvalues 4 (5 times) and 10
    a = torch.stack([zero, eye, diagonal, rank_one, repeated])
    _check_against_lapack(a)
    values, _ = small_eigh.jacobi_eigh(a)
    np.testing.assert_array_equal(values[0].numpy(), np.zeros(n))
    np.testing.assert_array_equal(values[2].numpy(), np.sort(torch.diagonal(diagonal).numpy()))


@needs_kernel
@pytest.mark.parametrize("scale", [1e-30, 1e25])
def test_extreme_scales(scale):
    # Squares of these entries under- or overflow float32; the kernel scales each matrix by a
    # power of 2 first (the Jacobi tests on unscaled squares stopped early at 1e-20, found here).
    _check_against_lapack(_symmetric(20, 9, seed=3, dtype=torch.float32) * scale)


@needs_kernel
def test_nan_is_not_returned_as_a_result():
    a = _symmetric(4, 5, seed=4, dtype=torch.float32)
    a[2, 1, 1] = float("nan")
    with pytest.raises(torch.linalg.LinAlgError):  # as torch.linalg.eigh itself
        small_eigh.jacobi_eigh(a)


@needs_kernel
def test_result_does_not_depend_on_the_batch():
    # Lanes converge at different sweeps; a converged lane is frozen, so a matrix's result is
    # bitwise the same alone, in a group with slow matrices, and at any position.
    easy = torch.diag(torch.arange(1.0, 13.0, dtype=torch.float32)).unsqueeze(0)
    easy = easy + 1e-3 * _symmetric(1, 12, seed=5, dtype=torch.float32)
    hard = _symmetric(40, 12, seed=6, dtype=torch.float32)
    alone = small_eigh.jacobi_eigh(easy)
    for position in (0, 7, 15, 16, 39):
        batch = torch.cat([hard[:position], easy, hard[position:]])
        values, vectors = small_eigh.jacobi_eigh(batch)
        np.testing.assert_array_equal(values[position].numpy(), alone[0][0].numpy())
        np.testing.assert_array_equal(vectors[position].numpy(), alone[1][0].numpy())


@needs_kernel
def test_empty_batch_and_bad_input():
    values, vectors = small_eigh.jacobi_eigh(torch.zeros(0, 4, 4))
    assert values.shape == (0, 4) and vectors.shape == (0, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        small_eigh.jacobi_eigh(torch.zeros(3, 4, 5))
    with pytest.raises(TypeError, match="float32 or float64"):
        small_eigh.jacobi_eigh(torch.zeros(3, 4, 4, dtype=torch.float16))


@needs_kernel
def test_solver_answers_do_not_depend_on_the_kernel(monkeypatch):
    # The nuclear norm with LAPACK only (the extension missing) reaches the same objective.
    g = torch.Generator().manual_seed(7)
    a = torch.rand(24, 20, 30, generator=g, dtype=torch.float64)
    mask = torch.rand(a.shape, generator=g) < 0.6
    with_kernel = nn_module.nuclear_norm(a, mask, mu=0.5, tol=1e-7)
    monkeypatch.setattr(small_eigh, "_jacobi", None)
    without = nn_module.nuclear_norm(a, mask, mu=0.5, tol=1e-7)

    def objective(x):
        return 0.5 * torch.linalg.svdvals(x).sum((-1,)) + ((x - a) * mask).square().sum((-2, -1))

    gap = (objective(with_kernel) - objective(without)).abs() / objective(without)
    assert gap.max() < 1e-6


@needs_kernel
def test_an_unconverged_matrix_does_not_flag_its_group(monkeypatch):
    # With a sweep cap too low for a cold matrix, that matrix is flagged and recomputed by
    # LAPACK; a near-diagonal matrix in the same group of 16 converges and keeps its own result
    # (review: the whole group used to be flagged, so a result depended on its company).
    monkeypatch.setattr(small_eigh, "MAX_SWEEPS", 3)
    easy = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)).unsqueeze(0)
    easy = easy + 1e-9 * _symmetric(1, 10, seed=8)
    hard = _symmetric(1, 10, seed=9)
    alone_values, alone_vectors = small_eigh.jacobi_eigh(easy)
    assert not torch.equal(alone_vectors[0], torch.linalg.eigh(easy)[1][0])  # Jacobi's, not LAPACK's
    values, vectors = small_eigh.jacobi_eigh(torch.cat([hard, easy]))
    assert torch.equal(values[1], alone_values[0]) and torch.equal(vectors[1], alone_vectors[0])
    expected = torch.linalg.eigh(hard)
    assert torch.equal(values[0], expected[0][0]) and torch.equal(vectors[0], expected[1][0])
    # A matrix whose pairs all pass the rotation test at once, while its off-diagonal norm is
    # above the stopping level, converges on its own, not when its whole group does.
    tol = 4 * torch.finfo(torch.float64).eps
    n = 16
    stuck = (torch.eye(n, dtype=torch.float64) + 0.5 * tol * (torch.ones(n, n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64)))
    alone = small_eigh.jacobi_eigh(stuck.unsqueeze(0))
    grouped = small_eigh.jacobi_eigh(torch.stack([_symmetric(1, n, seed=14)[0], stuck]))
    assert torch.equal(grouped[0][1], alone[0][0]) and torch.equal(grouped[1][1], alone[1][0])


@needs_kernel
@pytest.mark.parametrize("dtype, garbage", [(torch.float64, 1.0), (torch.float64, 1e200), (torch.float32, 1e30)])
def test_reads_the_lower_triangle_as_lapack_does(dtype, garbage):
    # Huge values in the upper triangle once set the matrix's scale and flushed the lower one's
    # squares to zero (review helper-15): the eigenvalues were off by 6.
    a = _symmetric(6, 9, seed=10, dtype=dtype)
    b = a.clone()
    upper = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
    b[:, upper] = garbage  # only the strict upper triangle changes
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(small_eigh.jacobi_eigh(b)[0].numpy(), torch.linalg.eigh(a)[0].numpy(), rtol=0, atol=atol)


@needs_kernel
def test_off_diagonal_norm_stops_a_matrix_at_its_level():
    # The stopping rule: ||off(A)||_F <= tol ||A||_F. One pair (0, 1) with a_01^2 = c tol^2 passes
    # the rotation test (a_01^2 > tol^2 |a_00 a_11| = 0.5 tol^2), and ||off||^2 = 2 c tol^2 while
    # ||A||_F^2 = 1.3125: at c = 0.6 the matrix has converged as it is (returned exactly), at
    # c = 1.0 it has not and is rotated. (An off-norm counted once, or four times, fails one.)
    tol = 4 * torch.finfo(torch.float64).eps
    results = []
    for c in (0.6, 1.0):
        a = torch.diag(torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
        a[0, 1] = a[1, 0] = (c**0.5) * tol
        results.append(small_eigh.jacobi_eigh(a.unsqueeze(0)))
    (values, vectors), (_, rotated) = results
    np.testing.assert_array_equal(values[0].numpy(), [0.25, 0.5, 1.0])
    np.testing.assert_array_equal(vectors[0].abs().numpy(), np.eye(3)[:, ::-1])
    assert (rotated[0].abs().numpy() != np.eye(3)[:, ::-1]).any()


@needs_kernel
def test_eigh_dispatch_matches_lapack_everywhere():
    # Jacobi up to the size limits (near diagonal 64, cold 40), LAPACK above them, under
    # autograd and for empty matrices.
    for n, near, jacobi in ((40, False, True), (41, False, False), (64, True, True), (65, True, False)):
        assert small_eigh.jacobi_runs(torch.zeros(2, n, n), near_diagonal=near) is jacobi
    for n, near in ((8, False), (20, False), (40, False), (48, False), (64, True), (72, True), (0, True)):
        h = _symmetric(5, n, seed=11, dtype=torch.float32) if n else torch.zeros(5, 0, 0)
        values, vectors = small_eigh.eigh(h, near_diagonal=near)
        assert values.shape == (5, n) and vectors.shape == (5, n, n)
        if n:
            np.testing.assert_allclose(values.numpy(), torch.linalg.eigh(h.double())[0].numpy(), rtol=0, atol=1e-4)
    h = _symmetric(3, 6, seed=12).requires_grad_(True)
    values, _ = small_eigh.eigh(h, near_diagonal=True)
    values.sum().backward()  # LAPACK's differentiable path
    assert h.grad is not None


@needs_kernel
def test_outputs_stay_on_the_input_device_whatever_the_default():
    h = _symmetric(4, 5, seed=13)
    torch.set_default_device("meta")
    try:
        values, vectors = small_eigh.jacobi_eigh(h)
    finally:
        torch.set_default_device("cpu")
    assert values.device.type == "cpu"
    np.testing.assert_allclose(values.numpy(), torch.linalg.eigh(h)[0].numpy(), rtol=0, atol=1e-12)


def _rayleigh_ritz_reference(gram: torch.Tensor, block: torch.Tensor):
    """The textbook Rayleigh-Ritz in float64 by LAPACK: Q = qr(G B), eigh(Q^T G Q)."""
    g = gram.double()
    q = torch.linalg.qr(g @ block.double()).Q
    values, small = torch.linalg.eigh(q.mT @ g @ q)
    return values, q @ small


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m, k", [(1, 1), (5, 5), (8, 3), (17, 16), (28, 12), (32, 24), (40, 33), (48, 20)])
def test_rayleigh_ritz_matches_lapack(dtype, m, k):
    # The compiled Rayleigh-Ritz (power step, Householder QR, projection, Jacobi) against the
    # same steps by LAPACK in float64: Ritz values, the Ritz vectors up to sign where their
    # values are well separated, orthonormality, in-subspace residuals. (The power step's
    # columns are reversed for Jacobi's speed only: the same subspace, so no test can see it.)
    g = torch.Generator().manual_seed(m * 100 + k)
    x = torch.randn(37, m, 3 * m, generator=g, dtype=torch.float64)
    gram = (x @ x.mT).to(dtype)
    block = torch.linalg.qr(torch.randn(37, m, k, generator=g, dtype=torch.float64)).Q.to(dtype)
    assert small_eigh.rayleigh_ritz_runs(gram, block)
    values, vectors, failed = small_eigh.rayleigh_ritz(gram, block)
    ref_values, ref_vectors = _rayleigh_ritz_reference(gram, block)
    eps = torch.finfo(dtype).eps
    norm = torch.linalg.matrix_norm(gram.double()).view(-1, 1)
    assert not failed.any()
    assert ((values.double() - ref_values).abs() <= 50 * m * eps * norm).all()
    assert (values[:, 1:] >= values[:, :-1]).all()
    v = vectors.double()
    assert (v.mT @ v - torch.eye(k, dtype=torch.float64)).abs().max() <= 8 * m * eps
    # The Ritz pairs' residuals within the subspace: Q^T (G v - theta v) = 0.
    q = torch.linalg.qr(gram.double() @ block.double()).Q
    inner = q.mT @ (gram.double() @ v - v * values.double().unsqueeze(-2))
    assert (inner.abs().amax((-2, -1)) <= 50 * m * eps * norm.view(-1)).all()
    # Well separated Ritz values: each vector agrees with LAPACK's up to sign.
    gap = torch.full_like(ref_values, float("inf"))  # distance to the nearest other Ritz value
    step = ref_values[:, 1:] - ref_values[:, :-1]
    gap[:, 1:] = torch.minimum(gap[:, 1:], step)
    gap[:, :-1] = torch.minimum(gap[:, :-1], step)
    separated = gap > 1e-2 * ref_values.abs().amax(-1, keepdim=True)
    aligned = (v * ref_vectors).sum(-2).abs()  # |cos| per Ritz vector
    assert separated.float().mean() > 0.5
    assert (aligned[separated] > 1 - 1e3 * m * eps).all()


@needs_kernel
def test_rayleigh_ritz_rank_deficient_blocks_and_bad_input():
    # A block with zero and repeated columns (Householder still gives an orthonormal basis),
    # an all-zero Gram matrix, and a NaN (flagged, not returned as a result).
    g = torch.Generator().manual_seed(21)
    x = torch.randn(3, 10, 30, generator=g, dtype=torch.float64)
    gram = x @ x.mT
    block = torch.linalg.qr(torch.randn(3, 10, 4, generator=g, dtype=torch.float64)).Q
    block[0, :, 1] = 0
    block[1, :, 2] = block[1, :, 3]
    gram[2] = 0
    values, vectors, failed = small_eigh.rayleigh_ritz(gram, block)
    assert not failed.any() and torch.isfinite(values).all() and torch.isfinite(vectors).all()
    v = vectors
    assert (v.mT @ v - torch.eye(4, dtype=torch.float64)).abs().max() < 1e-12
    np.testing.assert_array_equal(values[2].numpy(), np.zeros(4))
    # Each returned pair satisfies G v = theta v within the subspace it spans.
    for i in range(2):
        h = v[i].mT @ gram[i] @ v[i]
        np.testing.assert_allclose(h.numpy(), torch.diag(values[i]).numpy(), atol=1e-9 * float(gram[i].abs().max()))
    gram[1, 3, 4] = float("nan")
    assert small_eigh.rayleigh_ritz(gram, block)[2].tolist() == [False, True, False]


@needs_kernel
def test_rayleigh_ritz_result_does_not_depend_on_the_batch():
    g = torch.Generator().manual_seed(22)
    x = torch.randn(40, 12, 36, generator=g)
    gram = x @ x.mT
    block = torch.linalg.qr(torch.randn(40, 12, 6, generator=g)).Q
    alone = small_eigh.rayleigh_ritz(gram[5:6], block[5:6])
    for lo in (0, 3, 5):
        together = small_eigh.rayleigh_ritz(gram[lo:], block[lo:])
        assert torch.equal(together[0][5 - lo], alone[0][0]) and torch.equal(together[1][5 - lo], alone[1][0])


@needs_kernel
def test_rayleigh_ritz_dispatch():
    gram, block = torch.zeros(2, 8, 8), torch.zeros(2, 8, 3)
    assert small_eigh.rayleigh_ritz_runs(gram, block)
    assert not small_eigh.rayleigh_ritz_runs(gram.double(), block)  # mixed dtypes
    assert not small_eigh.rayleigh_ritz_runs(gram, torch.zeros(2, 8, 9))  # k > m
    assert small_eigh.rayleigh_ritz_runs(torch.zeros(2, 48, 48), torch.zeros(2, 48, 40))
    assert not small_eigh.rayleigh_ritz_runs(torch.zeros(2, 64, 64), torch.zeros(2, 64, 16))  # m > 48: torch's
    leaf = gram.clone().requires_grad_(True)
    assert not small_eigh.rayleigh_ritz_runs(leaf, block)


def _filter_reference(values: torch.Tensor, vectors: torch.Tensor, threshold: torch.Tensor):
    """U diag(w) U^T and the count of w > 0 in float64, by plain loops over the matrices."""
    filters, passed = [], []
    for lam, u, t in zip(values.double(), vectors.double(), threshold.double().reshape(-1)):
        s = lam.clamp_min(0).sqrt()
        w = torch.where(s > t, (s - t) / s.clamp_min(1e-300), torch.zeros_like(s))
        filters.append(sum(w[j] * torch.outer(u[:, j], u[:, j]) for j in range(len(w))))
        passed.append(int((w > 0).sum()))
    return torch.stack(filters), torch.tensor(passed)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m, k", [(1, 1), (7, 7), (7, 3), (16, 16), (28, 12), (32, 20), (33, 33), (40, 5)])
def test_soft_threshold_filter_matches_a_plain_loop(dtype, m, k):
    # m = 7, 28 and 33 leave partial row blocks of the kernel's 16-wide stores and 4-row groups.
    g = torch.Generator().manual_seed(m * 100 + k)
    x = torch.randn(9, m, 2 * m, generator=g, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(x @ x.mT)
    values, vectors = values[:, m - k :].to(dtype), vectors[:, :, m - k :].to(dtype)
    s = values.clamp_min(0).sqrt()
    # Per-matrix thresholds midway between two values (some pass, some not; no ties), one above
    # all, one at 0.
    below = s[:, k // 2 - 1] if k > 1 else torch.zeros_like(s[:, 0])
    threshold = (0.5 * (below + s[:, k // 2])).view(-1, 1)
    threshold[0], threshold[1] = s[1].max() * 2, 0.0
    want_f, want_p = _filter_reference(values, vectors, threshold)
    for t in (threshold, threshold.view(-1)):
        got_f, got_p = small_eigh.soft_threshold_filter(values, vectors, t)
        assert got_f.dtype == dtype and got_p.dtype == torch.long
        assert torch.equal(got_p, want_p)
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(got_f.double(), want_f, rtol=0, atol=8 * k * eps)
    assert want_p[0] == 0 and not small_eigh.soft_threshold_filter(values, vectors, threshold)[0][0].any()
    # A number as the threshold, and the torch path (autograd on) gives the same.
    got_f, got_p = small_eigh.soft_threshold_filter(values, vectors, 0.5)
    want_f, want_p = _filter_reference(values, vectors, torch.full((9,), 0.5))
    assert torch.equal(got_p, want_p)
    torch.testing.assert_close(got_f.double(), want_f, rtol=0, atol=8 * k * torch.finfo(dtype).eps)
    torch_f, torch_p = small_eigh.soft_threshold_filter(values.clone().requires_grad_(True), vectors, 0.5)
    assert torch.equal(torch_p, want_p)
    torch.testing.assert_close(torch_f.detach().double(), want_f, rtol=0, atol=8 * k * torch.finfo(dtype).eps)


def _groups_without_kernel(monkeypatch, gram, basis, sizes, threshold):
    """subspace_svt's per-group torch path with LAPACK's eigh and QR (no compiled kernel)."""
    subspace_svt = importlib.import_module("menet.estimation.subspace_svt")
    with monkeypatch.context() as patch:
        patch.setattr(small_eigh, "_jacobi", None)
        return subspace_svt._threshold_groups(gram, basis, sizes, threshold)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [5, 20, 32, 40])
def test_threshold_step_matches_the_torch_groups(monkeypatch, dtype, m):
    # Mixed block sizes (full decompositions among them), blocks near the top singular vectors
    # as in the solver: filters, updated bases (up to sign) and next sizes as LAPACK's path.
    g = torch.Generator().manual_seed(m)
    batch = 37
    x = torch.randn(batch, m, m, generator=g, dtype=torch.float64) @ torch.diag_embed(
        torch.logspace(0, -1.5, m, dtype=torch.float64).expand(batch, m)) @ torch.randn(batch, m, 3 * m, generator=g, dtype=torch.float64)
    gram = (x @ x.mT).to(dtype)
    _, u = torch.linalg.eigh(x @ x.mT)
    basis = torch.linalg.qr(u + 1e-3 * torch.randn(u.shape, generator=g, dtype=torch.float64)).Q.to(dtype).contiguous()
    choices = torch.tensor(sorted({max(1, m // 4), max(1, m // 2), m}))
    sizes = choices[torch.randint(len(choices), (batch,), generator=g)]
    sizes[:4] = max(1, m // 2)
    s = torch.linalg.eigvalsh(gram.double()).clamp_min(0).sqrt()
    threshold = (0.5 * (s[:, -3] + s[:, -4])).view(-1, 1).to(dtype)  # three pass (no ties)
    threshold[:4] = 0.5 * s[:4, m - max(1, m // 2)].view(-1, 1)  # blocks whose every value passes
    fused_basis, groups_basis = basis.clone(), basis.clone()
    filters, next_size, failed = small_eigh.threshold_step(gram, fused_basis, sizes, threshold, 2)
    want_filters, want_next = _groups_without_kernel(monkeypatch, gram, groups_basis, sizes, threshold)
    assert not failed.any() and torch.equal(next_size, want_next)
    assert (next_size[:4] == m).all()  # next time, the full decomposition
    torch.testing.assert_close(filters, want_filters, rtol=0, atol=200 * m * torch.finfo(dtype).eps)
    for b in range(batch):
        k = int(sizes[b])
        got, want = fused_basis[b, :, m - k :], groups_basis[b, :, m - k :]
        torch.testing.assert_close((got.mT @ want).abs().diagonal()[-2:], torch.ones(min(2, k), dtype=dtype),
                                   rtol=0, atol=1e-3 if dtype == torch.float32 else 1e-8)
        assert torch.equal(fused_basis[b, :, : m - k], basis[b, :, : m - k])  # the rest untouched


@needs_kernel
def test_threshold_step_leaves_failed_matrices_alone_and_checks_its_input():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 12, 30, generator=g)
    gram = x @ x.mT
    basis = torch.linalg.qr(torch.randn(20, 12, 12, generator=g)).Q.contiguous()
    basis[3, :, -4:] = float("nan")  # a broken block: flagged, nothing written
    before = basis.clone()
    sizes = torch.full((20,), 4)
    filters, next_size, failed = small_eigh.threshold_step(gram, basis, sizes, torch.full((20, 1), 1.0), 2)
    assert failed.tolist() == [i == 3 for i in range(20)]
    assert torch.isnan(basis[3, :, -4:]).all() and torch.equal(basis[3, :, :-4], before[3, :, :-4])
    assert torch.isfinite(filters[~failed]).all() and not torch.equal(basis[0], before[0])
    alone = small_eigh.threshold_step(gram[5:6], before[5:6].clone(), sizes[5:6], torch.ones(1, 1), 2)
    assert torch.equal(alone[0][0], filters[5]) and alone[1][0] == next_size[5]  # batch-independent
    for bad in (0, 13):
        with pytest.raises(ValueError, match="every block size must be in"):
            small_eigh.threshold_step(gram, basis.clone(), torch.full((20,), bad), torch.ones(20, 1), 2)
    with pytest.raises(ValueError, match="need 20 entries"):
        small_eigh.threshold_step(gram, basis.clone(), sizes, torch.ones(19, 1), 2)


@needs_kernel
def test_threshold_step_dispatch():
    gram = torch.zeros(2, 40, 40)
    assert small_eigh.threshold_step_runs(gram, torch.zeros(2, 40, 40))
    assert not small_eigh.threshold_step_runs(torch.zeros(2, 41, 41), torch.zeros(2, 41, 41))  # LAPACK's eigh there
    assert not small_eigh.threshold_step_runs(gram, torch.zeros(2, 40, 40, dtype=torch.float64))
    assert not small_eigh.threshold_step_runs(gram, torch.zeros(2, 40, 40).mT)  # written in place: contiguous
    assert not small_eigh.threshold_step_runs(gram.clone().requires_grad_(True), torch.zeros(2, 40, 40))


@needs_kernel
def test_threshold_step_unconverged_lanes_write_nothing(monkeypatch):
    # Finite but unconverged (one Jacobi sweep on blocks far from the eigenvectors): flagged,
    # their basis untouched and their filters NaN, not a stale or uninitialised stand-in
    # (review helper-18: a NaN block could not tell whether failed lanes were written).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 12, 30, generator=g, dtype=torch.float64)
    gram = x @ x.mT
    basis = torch.linalg.qr(torch.randn(20, 12, 12, generator=g, dtype=torch.float64)).Q.contiguous()
    before = basis.clone()
    monkeypatch.setattr(small_eigh, "MAX_SWEEPS", 1)
    sizes = torch.tensor([8, 12] * 10)
    filters, _, failed = small_eigh.threshold_step(gram, basis, sizes, torch.ones(20, 1, dtype=torch.float64), 2)
    assert failed.any()
    assert torch.equal(basis[failed], before[failed])
    assert torch.isnan(filters[failed]).all() and torch.isfinite(filters[~failed]).all()


@needs_kernel
def test_threshold_step_rejects_what_it_cannot_take():
    gram = torch.zeros(2, 8, 8)
    for basis in (torch.zeros(2, 8, 7), torch.zeros(2, 8, 8).mT, torch.zeros(2, 8, 8, dtype=torch.float64)):
        with pytest.raises(ValueError, match="threshold_step needs"):
            small_eigh.threshold_step(gram, basis, torch.full((2,), 4), torch.ones(2, 1), 2)


@needs_kernel
def test_soft_threshold_filter_zero_values_at_a_zero_threshold():
    # s > t, not s >= t: a zero singular value at threshold 0 gets weight 0, not 0 / 0; negative
    # eigenvalues (rounding below zero) count as zero in both paths.
    values = torch.tensor([[-1e-7, 0.0, 4.0]])
    vectors = torch.linalg.qr(torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(1))).Q
    want = torch.outer(vectors[0, :, 2], vectors[0, :, 2])
    for v in (values, values.clone().requires_grad_(True)):  # the kernel, then torch
        filt, passed = small_eigh.soft_threshold_filter(v, vectors, 0.0)
        assert passed.tolist() == [1]
        torch.testing.assert_close(filt[0].detach(), want)
    filt, passed = small_eigh.soft_threshold_filter(values.clone().requires_grad_(True), vectors, 1e-4)
    assert passed.tolist() == [1]  # sqrt(max(-1e-7, 0)) = 0, not sqrt(1e-7) > 1e-4
