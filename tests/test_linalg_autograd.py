"""femoe.linalg.sparse_solve: float64 gradcheck for every solver, gradients against a dense
reference, batch broadcasting, one adjoint solve reusing the forward's setup, skipped work."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from femoe.linalg import PRECONDITIONERS, SOLVERS, SolveInfo, sparse_solve
from femoe.sparse import BatchedCSR, CSRPattern

SYMMETRIC_ONLY = {"dense_cholesky", "cg", "minres"}
KRYLOV = ("cg", "minres", "gmres")


def small_pattern() -> CSRPattern:
    """5-point stencil on a 3 x 3 grid plus a long-range coupling (symmetric pattern, n = 9)."""
    m, n = 3, 9
    lap = sp.kron(sp.eye(m), sp.diags([1.0, 1.0, 1.0], [-1, 0, 1], (m, m))) + sp.kron(
        sp.diags([1.0, 1.0], [-1, 1], (m, m)), sp.eye(m)
    )
    return CSRPattern.from_scipy((lap + sp.diags([1.0, 1.0], [-4, 4], (n, n))).tocsr())


def base_values(pattern: CSRPattern, batch: int, symmetric: bool, seed: int = 0) -> torch.Tensor:
    """Diagonally dominant values (SPD when ``symmetric``)."""
    rng = np.random.default_rng(seed)
    vals = -rng.uniform(0.2, 1.0, (batch, pattern.nnz))
    if symmetric:
        vals = 0.5 * (vals + vals[:, pattern.transpose_permutation])
    vals[:, pattern.diagonal_positions] = 6.0 + rng.uniform(0, 1, (batch, pattern.shape[0]))
    return torch.tensor(vals)


def parametrise(pattern: CSRPattern, symmetric: bool):
    """values(theta): symmetric solvers see ``(theta + theta^T) / 2`` so that every perturbation
    gradcheck makes keeps A symmetric; the chain rule then checks grad + grad^T."""
    perm = torch.as_tensor(pattern.transpose_permutation)
    if symmetric:
        return lambda theta: 0.5 * (theta + theta[:, perm])
    return lambda theta: theta


CONFIGS = [
    (name, {"preconditioner": p, "rtol": 1e-13} if name in KRYLOV else {})
    for name in SOLVERS if name != "block_bidiagonal"  # block matrices only: tests/test_linalg_block.py
    for p in (PRECONDITIONERS if name in KRYLOV else [None])
] + [("auto", {}), ("superlu", {})]
SYMMETRIC_FLAGS = [name in SYMMETRIC_ONLY for name, _ in CONFIGS]
# superlu twice: once on a nonsymmetric matrix (COLAMD), once on a symmetric one (MMD, symmetric mode)
SYMMETRIC_FLAGS[-1] = True
IDS = [f"{n}-{o.get('preconditioner', '')}-{'sym' if s else 'gen'}" for (n, o), s in zip(CONFIGS, SYMMETRIC_FLAGS)]


@pytest.mark.parametrize("config,symmetric", list(zip(CONFIGS, SYMMETRIC_FLAGS)), ids=IDS)
@pytest.mark.parametrize("k", [None, 2])
def test_gradcheck_every_solver(config, symmetric, k):
    name, opts = config
    pattern = small_pattern()
    theta = base_values(pattern, 2, symmetric).requires_grad_()
    shape = (2, 9) if k is None else (2, 9, k)
    b = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    values = parametrise(pattern, symmetric)

    def f(theta, b):
        return sparse_solve(BatchedCSR(pattern, values(theta)), b, solver=name, **opts)

    assert torch.autograd.gradcheck(f, (theta, b), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", ["dense_lu", "superlu", "gmres", "cg"])
@pytest.mark.parametrize("broadcast", ["A", "b"])
def test_gradcheck_batch_broadcast(name, broadcast):
    pattern = small_pattern()
    symmetric = name == "cg"
    values = parametrise(pattern, symmetric)
    theta = base_values(pattern, 1 if broadcast == "A" else 3, symmetric).requires_grad_()
    b = torch.randn(3 if broadcast == "A" else 1, 9, 2, dtype=torch.float64).requires_grad_()
    opts = {"rtol": 1e-13} if name in KRYLOV else {}

    def f(theta, b):
        return sparse_solve(BatchedCSR(pattern, values(theta)), b, solver=name, **opts)

    assert f(theta, b).shape == (3, 9, 2)
    assert torch.autograd.gradcheck(f, (theta, b), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", ["superlu", "gmres", "dense_lu"])
def test_gradient_matches_dense_reference_on_the_pattern(name):
    pattern = small_pattern()
    vals = base_values(pattern, 2, False).requires_grad_()
    b = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 9, 3, dtype=torch.float64)
    opts = {"rtol": 1e-13} if name in KRYLOV else {}
    x = sparse_solve(BatchedCSR(pattern, vals), b, solver=name, **opts)
    (x * weight).sum().backward()

    dense = BatchedCSR(pattern, vals.detach()).to_dense().requires_grad_()
    b_ref = b.detach().clone().requires_grad_()
    x_ref = torch.linalg.solve(dense, b_ref)
    (x_ref * weight).sum().backward()
    torch.testing.assert_close(x.detach(), x_ref.detach())
    torch.testing.assert_close(b.grad, b_ref.grad)
    rows, cols = torch.as_tensor(pattern.rows), torch.as_tensor(pattern.indices)
    torch.testing.assert_close(vals.grad, dense.grad[:, rows, cols])
    assert vals.grad.shape == (2, pattern.nnz)


def test_backward_is_one_adjoint_solve_with_the_forward_setup(monkeypatch):
    import femoe.linalg._superlu as superlu

    factorisations, solves = [], []
    real_splu = superlu.sla.splu
    real_solve = superlu.SuperLUSolver._solve
    monkeypatch.setattr(superlu.sla, "splu", lambda *a, **k: factorisations.append(1) or real_splu(*a, **k))
    monkeypatch.setattr(superlu.SuperLUSolver, "_solve", lambda self, b, t: solves.append(t) or real_solve(self, b, t))
    pattern = small_pattern()
    vals = base_values(pattern, 2, False).requires_grad_()
    b = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    x = sparse_solve(BatchedCSR(pattern, vals), b, solver="superlu")
    x.sum().backward()
    assert len(factorisations) == 2  # one per batch element, in forward only
    assert solves == [False, True]


def test_no_graph_when_nothing_requires_grad_and_partial_grads():
    pattern = small_pattern()
    vals = base_values(pattern, 2, False)
    b = torch.randn(2, 9, dtype=torch.float64)
    x, info = sparse_solve(BatchedCSR(pattern, vals), b, solver="superlu", return_info=True)
    assert x.grad_fn is None and isinstance(info, SolveInfo) and info.solver == "superlu"
    b.requires_grad_()
    x = sparse_solve(BatchedCSR(pattern, vals), b, solver="dense_lu")
    x.sum().backward()
    assert b.grad is not None and vals.grad is None
    with torch.no_grad():
        assert sparse_solve(BatchedCSR(pattern, vals), b).grad_fn is None


def test_return_info_and_float32_backward():
    pattern = small_pattern()
    vals = base_values(pattern, 2, True).float().requires_grad_()
    b = torch.randn(2, 9, dtype=torch.float32, requires_grad=True)
    x, info = sparse_solve(BatchedCSR(pattern, vals), b, solver="cg", return_info=True)
    assert info.solver == "cg" and info.converged.all() and x.dtype == torch.float32
    x.square().sum().backward()
    assert vals.grad.dtype == torch.float32 and torch.isfinite(vals.grad).all()
    ref_vals = vals.detach().double().requires_grad_()
    sparse_solve(BatchedCSR(pattern, ref_vals), b.detach().double(), solver="dense_cholesky").square().sum().backward()
    # symmetric solver: compare the symmetrised gradients
    perm = torch.as_tensor(pattern.transpose_permutation)
    sym = lambda g: g + g[:, perm]
    torch.testing.assert_close(sym(vals.grad).double(), sym(ref_vals.grad), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["dense_cholesky", "dense_lu", "cg", "gmres", "auto"])
def test_gradcheck_cuda(name):
    pattern = small_pattern()
    symmetric = name in SYMMETRIC_ONLY or name == "auto"
    theta = base_values(pattern, 2, symmetric).cuda().requires_grad_()
    b = torch.randn(2, 9, dtype=torch.float64, device="cuda", requires_grad=True)
    opts = {"rtol": 1e-13} if name in KRYLOV else {}
    perm = torch.as_tensor(pattern.transpose_permutation, device="cuda")

    def f(theta, b):
        v = 0.5 * (theta + theta[:, perm]) if symmetric else theta
        return sparse_solve(BatchedCSR(pattern, v), b, solver=name, **opts)

    assert torch.autograd.gradcheck(f, (theta, b), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name,symmetric", [("dense_lu", False), ("superlu", False), ("superlu", True),
                                            ("dense_cholesky", True)])
@pytest.mark.parametrize("k", [None, 3])
def test_solve_with_a_solver_set_up_once(name, symmetric, k):
    """solve_with: the forward's solver reused, differentiable in b (gradcheck, a dense reference),
    equal to sparse_solve; a forward and backward use that one solver: one solve each way."""
    from femoe.linalg import make_solver, solve_with

    pattern = small_pattern()
    A = BatchedCSR(pattern, base_values(pattern, 1, symmetric))
    solver = make_solver(name, A)
    shape = (2, pattern.shape[0]) if k is None else (2, pattern.shape[0], k)
    b = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: solve_with(solver, x), (b,))
    torch.testing.assert_close(solve_with(solver, b), sparse_solve(A, b, name), rtol=1e-12, atol=1e-12)
    Ad = A.to_dense()[0]
    x = solve_with(solver, b)
    w = torch.randn_like(x)
    (g,) = torch.autograd.grad((x * w).sum(), b)
    want = torch.linalg.solve(Ad.T, w.reshape(2, pattern.shape[0], -1)).reshape(w.shape)  # A^{-T} w
    torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    calls = []
    original = type(solver)._solve
    type(solver)._solve = lambda self, rhs, transpose: calls.append(transpose) or original(self, rhs, transpose)
    try:
        torch.autograd.grad((solve_with(solver, b) * w).sum(), b)
    finally:
        type(solver)._solve = original
    assert calls == [False, True]  # one forward solve, one transposed solve, no new set-up
