"""The block lower-bidiagonal solver ("block_bidiagonal"): against dense solves and SuperLU, its
transpose, float32, batch broadcasting, the gradient of sparse_solve, bad input, and patch mode's
space-time Newton with it equal to the same Newton with one SuperLU."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from femoe.errors import ConfigError, SingularMatrixError
from femoe.linalg import make_solver, sparse_solve
from femoe.sparse import BatchedCSR, CSRPattern


def block_matrices(T: int = 4, m: int = 5, batch: int = 3, seed: int = 0, dtype=torch.float64,
                   extra: tuple[int, int] | None = None) -> BatchedCSR:
    """Nonsymmetric block lower-bidiagonal matrices: sparse diagonal blocks (diagonally dominant,
    a random off-diagonal pattern) and sparse coupling blocks; ``extra`` adds one entry."""
    rng = np.random.default_rng(seed)
    shape = (T * m, T * m)
    D = sp.block_diag([sp.random(m, m, density=0.4, random_state=rng) + sp.eye(m) for _ in range(T)])
    S = D.tocsr()
    if T > 1:  # the coupling blocks: rows of block l, columns of block l - 1
        C = sp.block_diag([sp.random(m, m, density=0.4, random_state=rng) for _ in range(T - 1)])
        S = S + sp.vstack([sp.csr_matrix((m, T * m)), sp.hstack([C, sp.csr_matrix(((T - 1) * m, m))])])
    S = S.tocsr()
    if extra is not None:
        S = (S + sp.csr_matrix(([1.0], ([extra[0]], [extra[1]])), shape=shape)).tocsr()
    S.sort_indices()
    pattern = CSRPattern(S.indptr.astype(np.int64), S.indices.astype(np.int64), shape)
    rows = pattern.rows
    vals = rng.uniform(-1.0, 1.0, (batch, pattern.nnz))
    diag = rows == pattern.indices
    vals[:, diag] = 4.0 + rng.uniform(0, 1, (batch, int(diag.sum())))
    return BatchedCSR(pattern, torch.tensor(vals, dtype=dtype))


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_dense_solve_superlu_and_transpose(k, batch):
    A = block_matrices(batch=batch)
    n = A.pattern.shape[0]
    shape = (batch, n) if k is None else (batch, n, k)
    b = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    solver = make_solver("block_bidiagonal", A, block_size=5)
    lu = make_solver("superlu", A)
    dense = A.to_dense()
    rhs = b if k is not None else b.unsqueeze(-1)
    for transpose in (False, True):
        x, info = solver.solve(b, transpose=transpose)
        ref = torch.linalg.solve(dense.transpose(1, 2) if transpose else dense, rhs)
        torch.testing.assert_close(x, ref if k is not None else ref.squeeze(-1), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(x, lu.solve(b, transpose=transpose)[0], rtol=1e-12, atol=1e-13)
        assert info.converged.all() and info.residual_norms.max() < 1e-13 and info.transpose is transpose
    # the transpose solve really uses A^T, the coupling blocks included
    assert not torch.allclose(solver.solve(b)[0], solver.solve(b, transpose=True)[0])


def test_one_block_and_float32_and_broadcast():
    A1 = block_matrices(T=1, batch=2)  # a single block: one sparse LU
    gen = torch.Generator().manual_seed(3)
    b = torch.randn(2, 5, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(make_solver("block_bidiagonal", A1, block_size=5).solve(b)[0],
                               torch.linalg.solve(A1.to_dense(), b), rtol=1e-12, atol=1e-13)
    A = block_matrices(batch=2, dtype=torch.float32)
    b = torch.randn(2, 20, dtype=torch.float32, generator=gen)
    x, _ = make_solver("block_bidiagonal", A, block_size=5).solve(b)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.double(), torch.linalg.solve(A.to_dense().double(), b.double()), rtol=1e-4, atol=1e-5)
    A3 = block_matrices(batch=3)
    A1 = BatchedCSR(A3.pattern, A3.values[:1])
    b3 = torch.randn(3, 20, 2, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(make_solver("block_bidiagonal", A1, block_size=5).solve(b3)[0],
                               torch.linalg.solve(A1.to_dense().expand(3, -1, -1), b3), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(make_solver("block_bidiagonal", A3, block_size=5).solve(b3[:1])[0],
                               torch.linalg.solve(A3.to_dense(), b3[:1].expand(3, -1, -1)), rtol=1e-12, atol=1e-13)


def test_gradcheck_of_sparse_solve():
    A = block_matrices(T=3, m=3, batch=2, seed=4)
    theta = A.values.clone().requires_grad_(True)
    b = torch.randn(2, 9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)

    def f(theta, b):
        return sparse_solve(BatchedCSR(A.pattern, theta), b, solver="block_bidiagonal", block_size=3)

    assert torch.autograd.gradcheck(f, (theta, b), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_bad_input_is_refused_with_the_reason():
    A = block_matrices()
    with pytest.raises(ConfigError, match="block_size must divide the size 20"):
        make_solver("block_bidiagonal", A, block_size=3)
    with pytest.raises(ConfigError, match="needs block_size="):
        make_solver("block_bidiagonal", A)
    upper = block_matrices(extra=(2, 17))  # an entry in block (0, 3): not block lower-bidiagonal
    with pytest.raises(ConfigError, match=r"entry \(2, 17\) lies in block \(0, 3\)"):
        make_solver("block_bidiagonal", upper, block_size=5)
    far = block_matrices(extra=(17, 2))  # block (3, 0): two levels back
    with pytest.raises(ConfigError, match="block lower-bidiagonal"):
        make_solver("block_bidiagonal", far, block_size=5)
    S = block_matrices(batch=2)
    vals = S.values.clone()
    rows = torch.as_tensor(S.pattern.rows)
    vals[1, (rows >= 10) & (rows < 15)] = 0.0  # block 2 of batch element 1 has zero rows
    with pytest.raises(SingularMatrixError, match="diagonal block 2 of batch element 1"):
        make_solver("block_bidiagonal", BatchedCSR(S.pattern, vals), block_size=5)


def test_patch_space_time_newton_by_blocks_equals_superlu(make_diffusion_sorption, monkeypatch):
    """Patch mode's space-time Newton with the level blocks (chosen by "auto" from
    BLOCK_SOLVE_MIN unknowns) gives SuperLU's field, gradient and Newton iterations."""
    import femoe.experts._patch as patch_module
    from femoe.experts import PatchConstraint

    pb = make_diffusion_sorption(n_cells=16, n_saved=6)
    g = torch.Generator().manual_seed(0)
    u0 = torch.rand(2, pb.n, dtype=torch.float64, generator=g)
    U_hat = (u0[:, None] + 0.05 * torch.randn(2, 6, pb.n, dtype=torch.float64, generator=g))
    weights = torch.rand(U_hat.shape, dtype=torch.float64, generator=g)
    used = []

    def run(**kw):
        layer = PatchConstraint(pb, 2, partition="slab", dt=10.0, **kw)
        x = U_hat.clone().requires_grad_(True)
        u, info = layer(x, None, u0)
        (grad,) = torch.autograd.grad((u * weights).sum(), x)
        used.append(info.newton[0].linear_solver if info.newton else None)
        return u.detach(), grad, info

    monkeypatch.setattr(patch_module, "BLOCK_SOLVE_MIN", 1)
    u_b, g_b, i_b = run()
    monkeypatch.setattr(patch_module, "BLOCK_SOLVE_MIN", 10**9)
    u_s, g_s, i_s = run()
    assert used == ["block_bidiagonal", "superlu"]
    assert torch.equal(i_b.iterations, i_s.iterations)
    torch.testing.assert_close(u_b, u_s, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(g_b, g_s, rtol=1e-10, atol=1e-12)
    u_n, g_n, _ = run(linear_solver="block_bidiagonal")  # by name: block_size is filled in
    torch.testing.assert_close(u_n, u_b, rtol=0, atol=0)
    # by name on the level-by-level solve: each level's system is one block
    u_l, g_l, _ = run(linear_solver="block_bidiagonal", time_solve="levels")
    u_ls, g_ls, _ = run(linear_solver="superlu", time_solve="levels")
    torch.testing.assert_close(u_l, u_ls, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(g_l, g_ls, rtol=1e-10, atol=1e-12)
