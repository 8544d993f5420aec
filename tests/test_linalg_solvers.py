"""femoe.linalg solvers: accuracy against dense numpy solves, transpose solves, errors, float32,
non-convergence, and a real P1 Poisson matrix from scikit-fem."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch

from femoe.errors import ConfigError, ConvergenceError, ConvergenceWarning, ShapeError, SingularMatrixError
from femoe.linalg import PRECONDITIONERS, SOLVERS, SolveInfo, available_solvers, choose_solver, make_solver
from femoe.sparse import BatchedCSR, CSRPattern

SYMMETRIC_ONLY = {"dense_cholesky", "cg", "minres"}
KRYLOV = ("cg", "minres", "gmres")
BLOCK = ("block_bidiagonal",)


def grid_pattern(m: int = 4) -> CSRPattern:
    """5-point stencil on an m x m grid plus one long-range coupling per row (symmetric pattern)."""
    n = m * m
    lap = sp.kron(sp.eye(m), sp.diags([1.0, 1.0, 1.0], [-1, 0, 1], (m, m))) + sp.kron(
        sp.diags([1.0, 1.0], [-1, 1], (m, m)), sp.eye(m)
    )
    far = sp.diags([1.0, 1.0], [-(n // 2), n // 2], (n, n))
    return CSRPattern.from_scipy((lap + far).tocsr())


def random_matrices(pattern: CSRPattern, batch: int, symmetric: bool, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> BatchedCSR:
    """Diagonally dominant matrices on ``pattern``: SPD when ``symmetric``, else nonsymmetric."""
    rng = np.random.default_rng(seed)
    vals = -rng.uniform(0.2, 1.0, (batch, pattern.nnz))
    if symmetric:
        vals = 0.5 * (vals + vals[:, pattern.transpose_permutation])
    diag = pattern.diagonal_positions
    vals[:, diag] = 0.0
    row_sums = np.abs(vals).reshape(batch, -1)
    dominance = np.zeros((batch, pattern.shape[0]))
    np.add.at(dominance, (slice(None), pattern.rows), row_sums)
    vals[:, diag] = dominance + rng.uniform(0.5, 1.5, (batch, pattern.shape[0]))
    return BatchedCSR(pattern, torch.tensor(vals, dtype=dtype))


def solver_configs():
    """(name, options) for every registered solver and every preconditioner of the Krylov ones."""
    configs = []
    for name in SOLVERS:
        if name in BLOCK:
            continue  # block lower-bidiagonal matrices only: tests/test_linalg_block.py
        if name in KRYLOV:
            configs += [(name, {"preconditioner": p, "rtol": 1e-13}) for p in PRECONDITIONERS]
        else:
            configs.append((name, {}))
    return configs + [("auto", {})]


CONFIGS = solver_configs()
IDS = [f"{n}-{o.get('preconditioner', '')}" for n, o in CONFIGS]


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
@pytest.mark.parametrize("k", [None, 3])
def test_matches_dense_numpy_solve_and_transpose(name, opts, k):
    symmetric = name in SYMMETRIC_ONLY
    A = random_matrices(grid_pattern(), 3, symmetric, seed=1)
    rng = np.random.default_rng(2)
    shape = (3, A.pattern.shape[0]) if k is None else (3, A.pattern.shape[0], k)
    b = torch.tensor(rng.standard_normal(shape))
    solver = make_solver(name, A, **opts)
    dense = A.to_dense().numpy()
    rhs = b.numpy() if k is not None else b.numpy()[..., None]
    for transpose in (False, True):
        x, info = solver.solve(b, transpose=transpose)
        mats = dense.transpose(0, 2, 1) if transpose else dense
        ref = np.linalg.solve(mats, rhs)
        ref = ref if k is not None else ref[..., 0]
        assert x.shape == b.shape and x.dtype == torch.float64
        np.testing.assert_allclose(x.numpy(), ref, rtol=1e-9, atol=1e-10)
        assert isinstance(info, SolveInfo) and info.transpose is transpose
        assert info.converged.all() and info.converged.shape == (3,)
        assert info.residual_norms.max() < 1e-11
        assert info.iterations.shape == (3,)
        if solver.name in KRYLOV:
            assert (info.iterations > 0).all()
    if not symmetric:
        # the transpose solve must really use A^T (the test matrices are far from symmetric)
        x_t, _ = solver.solve(b, transpose=True)
        x_n, _ = solver.solve(b)
        assert not torch.allclose(x_t, x_n)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_float32(name, opts):
    opts = {**opts, "rtol": 1e-6} if "rtol" in opts else opts
    A64 = random_matrices(grid_pattern(), 2, name in SYMMETRIC_ONLY, seed=3)
    A = BatchedCSR(A64.pattern, A64.values.float())
    b = torch.randn(2, A.pattern.shape[0], dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    x, info = make_solver(name, A, **opts).solve(b)
    assert x.dtype == torch.float32 and info.converged.all()
    ref = np.linalg.solve(A64.to_dense().numpy(), b.double().numpy()[..., None])[..., 0]
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["dense_lu", "superlu", "gmres", "cg"])
def test_batch_broadcast_both_ways(name):
    symmetric = name == "cg"
    A3 = random_matrices(grid_pattern(), 3, symmetric, seed=4)
    A1 = BatchedCSR(A3.pattern, A3.values[:1])
    b3 = torch.randn(3, A3.pattern.shape[0], 2, dtype=torch.float64)
    opts = {"rtol": 1e-13} if name in KRYLOV else {}
    x, info = make_solver(name, A1, **opts).solve(b3)
    ref = torch.linalg.solve(A1.to_dense().expand(3, -1, -1), b3)
    torch.testing.assert_close(x, ref, rtol=1e-9, atol=1e-10)
    assert info.converged.shape == (3,)
    x, _ = make_solver(name, A3, **opts).solve(b3[:1])
    torch.testing.assert_close(x, torch.linalg.solve(A3.to_dense(), b3[:1].expand(3, -1, -1)), rtol=1e-9, atol=1e-10)


def test_zero_rhs_gives_zero_and_converges():
    A = random_matrices(grid_pattern(), 2, True)
    for name in ("cg", "minres", "gmres"):
        x, info = make_solver(name, A).solve(torch.zeros(2, A.pattern.shape[0], dtype=torch.float64))
        assert torch.equal(x, torch.zeros_like(x)) and info.converged.all()
        assert (info.iterations == 0).all()


def test_unknown_names_list_the_choices():
    A = random_matrices(grid_pattern(), 1, True)
    with pytest.raises(ConfigError) as err:
        make_solver("choleski", A)
    for valid in available_solvers():
        assert repr(valid) in str(err.value)
    with pytest.raises(ConfigError, match="'amg'"):
        make_solver("cg", A, preconditioner="ilu")
    with pytest.raises(ConfigError, match="maxiter"):
        make_solver("cg", A, max_iter=3)
    with pytest.raises(ConfigError, match="Unknown solver option"):
        make_solver("auto", A, tolerance=1e-3)
    # options meant for another solver are dropped by auto
    assert make_solver("auto", A, rtol=1e-3).name == "dense_cholesky"


@pytest.mark.parametrize("name", sorted(SYMMETRIC_ONLY))
def test_symmetric_solvers_reject_nonsymmetric_matrices(name):
    A = random_matrices(grid_pattern(), 2, False)
    with pytest.raises(ConfigError, match="batch element 0 of A is not symmetric"):
        make_solver(name, A)


def singular_batch() -> BatchedCSR:
    """Batch of 3 SPD matrices in which element 1 has an all-zero row and column."""
    A = random_matrices(grid_pattern(), 3, True)
    values = A.values.clone()
    p = A.pattern
    dead = 5
    values[1, (p.rows == dead) | (p.indices == dead)] = 0.0
    return BatchedCSR(p, values)


@pytest.mark.parametrize("name", ["dense_cholesky", "dense_lu", "superlu", "auto"])
def test_singular_matrix_names_the_batch_element(name):
    with pytest.raises(SingularMatrixError, match="batch element 1"):
        make_solver(name, singular_batch())


def test_jacobi_rejects_zero_diagonal():
    A = singular_batch()
    with pytest.raises(SingularMatrixError, match="diagonal entry 5 of batch element 1"):
        make_solver("cg", A, preconditioner="jacobi")


def test_auto_falls_back_to_lu_for_symmetric_indefinite():
    A = random_matrices(grid_pattern(), 2, True)
    values = A.values.clone()
    values[:, A.pattern.diagonal_positions[0]] *= -1  # one negative pivot: symmetric, indefinite
    A = BatchedCSR(A.pattern, values)
    with pytest.raises(SingularMatrixError, match="not positive definite"):
        make_solver("dense_cholesky", A)
    solver = make_solver("auto", A)
    assert solver.name == "dense_lu"
    b = torch.randn(2, A.pattern.shape[0], dtype=torch.float64)
    x, _ = solver.solve(b)
    torch.testing.assert_close(x, torch.linalg.solve(A.to_dense(), b))
    # MINRES handles symmetric indefinite matrices (preconditioner must stay SPD)
    x, info = make_solver("minres", A, preconditioner="none", rtol=1e-12).solve(b)
    assert info.converged.all()
    torch.testing.assert_close(x, torch.linalg.solve(A.to_dense(), b))
    # and superlu's no-pivoting symmetric mode falls back to COLAMD if it meets a zero pivot
    zero_diag = values.clone()
    zero_diag[:, A.pattern.diagonal_positions[0]] = 0.0
    Az = BatchedCSR(A.pattern, zero_diag)
    x, _ = make_solver("superlu", Az).solve(b)
    torch.testing.assert_close(x, torch.linalg.solve(Az.to_dense(), b))


@pytest.mark.parametrize("name", KRYLOV)
def test_nonconvergence_is_reported_and_strict_raises(name):
    A = random_matrices(grid_pattern(6), 2, name != "gmres")
    b = torch.randn(2, 36, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        x, info = make_solver(name, A, maxiter=2, preconditioner="none").solve(b)
    assert not info.converged.any() and not info.all_converged
    assert (info.iterations == 2).all()
    assert torch.isfinite(x).all() and (info.residual_norms > 1e-6).all()
    with pytest.raises(ConvergenceError) as err:
        make_solver(name, A, maxiter=2, strict=True).solve(b)
    assert isinstance(err.value.info, SolveInfo) and not err.value.info.converged.any()


def test_shape_dtype_device_validation_names_the_argument():
    A = random_matrices(grid_pattern(), 2, True)
    solver = make_solver("dense_lu", A)
    n = A.pattern.shape[0]
    with pytest.raises(ShapeError, match=r"b must have shape \(batch, n=16\).*got \(2, 15\)"):
        solver.solve(torch.zeros(2, n - 1, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"b must have shape"):
        solver.solve(torch.zeros(n, dtype=torch.float64))
    with pytest.raises(ShapeError, match="dtype of A"):
        solver.solve(torch.zeros(2, n, dtype=torch.float32))
    with pytest.raises(ShapeError, match="batch size 2"):
        solver.solve(torch.zeros(3, n, dtype=torch.float64))
    rect = BatchedCSR(CSRPattern.from_scipy(sp.random(4, 5, density=0.5, random_state=0)), torch.ones(1, 10))
    with pytest.raises(ShapeError, match="A must be square"):
        make_solver("superlu", rect)
    with pytest.raises(ShapeError, match="BatchedCSR"):
        make_solver("superlu", A.to_dense())


def test_auto_choice_by_size_and_symmetry(monkeypatch):
    import femoe.linalg._registry as registry

    small = random_matrices(grid_pattern(), 1, True)
    assert choose_solver(small)[0] == "dense_cholesky"
    assert choose_solver(random_matrices(grid_pattern(), 1, False))[0] == "dense_lu"
    n = 2500
    big = sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], (n, n)).tocsr()
    A = BatchedCSR(CSRPattern.from_scipy(big), torch.tensor(big.data)[None])
    assert choose_solver(A) == ("superlu", {})
    monkeypatch.setattr(registry, "AMG_MIN_N", 1000)
    assert choose_solver(A) == ("cg", {"preconditioner": "amg"})
    solver = make_solver("auto", A, rtol=1e-12)
    assert solver.name == "cg" and solver.rtol == 1e-12
    monkeypatch.setattr(registry, "DENSE_MEMORY_BUDGET", 100)
    assert choose_solver(small)[0] != "dense_cholesky"


def poisson_p1():
    """P1 stiffness of -Laplace u = 1 on the unit square, MeshTri().refined(4), Dirichlet condensed."""
    import skfem
    from skfem.models.poisson import laplace, unit_load

    mesh = skfem.MeshTri().refined(4)
    basis = skfem.Basis(mesh, skfem.ElementTriP1())
    K = skfem.asm(laplace, basis)
    f = skfem.asm(unit_load, basis)
    Kc, fc, _, _ = skfem.condense(K, f, D=basis.get_dofs())
    return sp.csr_matrix(Kc), fc


@pytest.mark.parametrize("name,preconditioner", [("cg", "amg"), ("cg", "jacobi"), ("minres", "amg"), ("gmres", "amg")])
def test_fem_poisson_matrix(name, preconditioner):
    K, f = poisson_p1()
    pattern = CSRPattern.from_scipy(K)
    A = BatchedCSR(pattern, torch.tensor(K[pattern.rows, pattern.indices].A1)[None])
    ref = sla.spsolve(K.tocsc(), f)
    b = torch.tensor(f)[None]
    x, info = make_solver(name, A, preconditioner=preconditioner, rtol=1e-10).solve(b)
    assert info.converged.all()
    np.testing.assert_allclose(x[0].numpy(), ref, rtol=1e-7, atol=1e-10)
    if preconditioner == "amg":
        _, jac = make_solver(name, A, preconditioner="jacobi", rtol=1e-10).solve(b)
        assert int(info.iterations[0]) < int(jac.iterations[0]) / 2


def test_superlu_reuses_its_factorisation(monkeypatch):
    import femoe.linalg._superlu as superlu

    calls = []
    real = superlu.sla.splu
    monkeypatch.setattr(superlu.sla, "splu", lambda *a, **k: calls.append(1) or real(*a, **k))
    A = random_matrices(grid_pattern(), 3, False)
    solver = make_solver("superlu", A)
    for transpose in (False, True, False):
        solver.solve(torch.randn(3, 16, dtype=torch.float64), transpose=transpose)
    assert len(calls) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["dense_cholesky", "dense_lu", "cg", "minres", "gmres", "superlu", "auto"])
def test_cuda_solvers(name):
    symmetric = name in SYMMETRIC_ONLY
    A = random_matrices(grid_pattern(), 2, symmetric)
    A = BatchedCSR(A.pattern, A.values.cuda())
    b = torch.randn(2, 16, 2, dtype=torch.float64, device="cuda")
    x, info = make_solver(name, A).solve(b, transpose=True)
    assert x.device == b.device
    torch.testing.assert_close(x, torch.linalg.solve(A.to_dense().transpose(1, 2), b), rtol=1e-8, atol=1e-9)
