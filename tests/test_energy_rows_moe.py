"""Energy rows in the mixture of experts: one block per expert (additive Schwarz,
:class:`femoe.layers.BlockEnergyRows`), so that each expert measures its own rows in the energy
norm of its own subdomain problem without reading any other expert's rows."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import skfem as fe
import torch

from femoe.errors import ProblemError
from femoe.experts import HardConstraintMoE
from femoe.helpers import dot, grad
from femoe.layers import BlockEnergyRows, RowTransform
from femoe.problem import Problem
from femoe.train.rows import energy_rows

F64 = torch.float64
WALLS = ("left", "right", "top", "bottom")


def darcy_like(refine=3):
    """-div(kappa grad u) = f on the unit square, u = 0 on the walls, nodal kappa (reference 1)."""
    mesh = fe.MeshTri().refined(refine).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    return Problem(basis, lambda u, v, w: w.kappa * dot(grad(u), grad(v)) - w.f * v,
                   dirichlet={k: 0.0 for k in WALLS}, coefficients={"kappa": "nodal"}, defaults={"f": 1.0})


def _K(pb, kappa):
    """The eliminated stiffness (Dirichlet rows and columns -> identity), dense."""
    _, J = pb.residual_and_jacobian(torch.zeros(1, pb.n, dtype=F64), {"kappa": kappa})
    K = sp.csr_matrix((J.values[0].numpy(), J.pattern.indices, J.pattern.indptr), shape=(pb.n, pb.n)).toarray()
    d = pb.dirichlet_dofs
    K[d, :], K[:, d] = 0.0, 0.0
    K[d, d] = 1.0
    return 0.5 * (K + K.T)


def _kappa(pb, batch, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(0.5 * torch.randn(batch, pb.n, dtype=F64, generator=g))


def _exact(pb, kappa):
    """The discrete solution of each sample (zero on the walls)."""
    out = np.zeros((kappa.shape[0], pb.n))
    free = pb.free_dofs
    for b in range(kappa.shape[0]):
        p = {"kappa": kappa[b:b + 1]}
        K = _K(pb, kappa[b:b + 1])
        R0 = pb.residual(torch.zeros(1, pb.n, dtype=F64), p)[0].numpy()
        out[b, free] = np.linalg.solve(K[np.ix_(free, free)], -R0[free])
    return out


@pytest.mark.parametrize("per_sample", [False, True])
def test_each_expert_measures_its_rows_in_its_subdomain_energy_norm(per_sample):
    pb = darcy_like()
    moe = HardConstraintMoE(pb, experts=4, partition="rcb", row_scale=energy_rows(pb, per_sample=per_sample))
    g = moe.groups[0]
    T = g.model.scale
    assert isinstance(T, BlockEnergyRows)
    kappa = _kappa(pb, 2, 0)
    r = torch.randn(2, pb.n, dtype=F64, generator=torch.Generator().manual_seed(1))
    u2g = np.asarray(g.union.union_to_global)
    y = T(r[:, u2g], {"kappa": kappa})
    for b in range(2):
        K = _K(pb, kappa[b:b + 1] if per_sample else torch.ones(1, pb.n, dtype=F64))
        for ru, rg in zip(g.rows_union, g.rows_global):
            rk = r[b, rg].numpy()
            want = rk @ np.linalg.solve(K[np.ix_(rg, rg)], rk)
            np.testing.assert_allclose(float((y[b, ru] ** 2).sum()), want, rtol=1e-10)
    # a Jacobian's columns transform like rows; rows no expert enforces pass through
    X = torch.randn(2, g.union.n, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(T(X, {"kappa": kappa})[..., 2], T(X[..., 2], {"kappa": kappa}), rtol=1e-12, atol=1e-14)
    enforced = np.zeros(g.union.n, dtype=bool)
    enforced[np.concatenate(g.rows_union)] = True
    torch.testing.assert_close(y[:, ~enforced], r[:, u2g][:, ~enforced])


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("batch", [1, 2])
def test_a_basis_holding_the_solution_gives_it_back_for_every_number_of_experts(per_sample, K, batch):
    pb = darcy_like()
    kappa = _kappa(pb, batch, 3)
    ustar = torch.as_tensor(_exact(pb, kappa))
    g = torch.Generator().manual_seed(4)
    B = torch.randn(batch, pb.n, 5, dtype=F64, generator=g)
    B[:, :, 2] = ustar  # the exact solution is a member of the span
    moe = HardConstraintMoE(pb, experts=K, partition="rcb", rho=1e-14, tol=1e-14,
                            row_scale=energy_rows(pb, per_sample=per_sample))
    u, info = moe(B, {"kappa": kappa})
    assert info.all_converged
    torch.testing.assert_close(u, ustar, atol=1e-9 * float(ustar.abs().max()), rtol=0)


@pytest.mark.parametrize("per_sample", [False, True])
def test_each_expert_solves_its_own_energy_least_squares_problem(per_sample):
    """Expert k's weights minimise ||L_k^{-1} (s R(B w))_{O_k}||^2 (dense reference), and the
    stitched field is B w_k on the DOFs expert k owns."""
    pb = darcy_like()
    kappa = _kappa(pb, 2, 5)
    dw = 3.0  # a Dirichlet weight that is not 1
    rows = energy_rows(pb, dirichlet_weight=dw, per_sample=per_sample)
    moe = HardConstraintMoE(pb, experts=4, partition="rcb", rho=1e-14, tol=1e-13, row_scale=rows)
    B = torch.randn(2, pb.n, 6, dtype=F64, generator=torch.Generator().manual_seed(6))
    u, info = moe(B, {"kappa": kappa})
    assert info.all_converged
    g = moe.groups[0]
    s = np.ones(pb.n)
    s[pb.dirichlet_dofs] = dw
    for b in range(2):
        p = {"kappa": kappa[b:b + 1]}
        R0, J = pb.residual_and_jacobian(torch.zeros(1, pb.n, dtype=F64), p)
        J = sp.csr_matrix((J.values[0].numpy(), J.pattern.indices, J.pattern.indptr), shape=(pb.n, pb.n)).toarray()
        Kref = _K(pb, kappa[b:b + 1] if per_sample else torch.ones(1, pb.n, dtype=F64))
        Bb = B[b].numpy()
        for rg, own in zip(g.rows_global, g.owned_global):
            Lk = np.linalg.cholesky(Kref[np.ix_(rg, rg)])
            A = np.linalg.solve(Lk, (s[rg, None] * J[rg]) @ Bb)  # R is affine: R(Bw) = R0 + J B w
            c = np.linalg.solve(Lk, s[rg] * R0[0, rg].numpy())
            w = np.linalg.lstsq(A, -c, rcond=None)[0]
            np.testing.assert_allclose(u[b, own].numpy(), Bb[own] @ w, atol=1e-8 * np.abs(Bb @ w).max())


def test_gradcheck_moe_with_per_sample_energy_rows():
    pb = darcy_like(refine=2)
    moe = HardConstraintMoE(pb, experts=2, partition="rcb", tol=1e-14, report=False,
                            row_scale=energy_rows(pb, per_sample=True))
    g = torch.Generator().manual_seed(7)
    B = torch.randn(2, pb.n, 3, dtype=F64, generator=g).requires_grad_(True)
    kappa = (1.0 + torch.rand(2, pb.n, dtype=F64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda B, kappa: moe(B, {"kappa": kappa})[0], (B, kappa), fast_mode=True)


def test_a_general_row_transform_is_refused_by_the_moe():
    pb = darcy_like(refine=2)
    L = np.tril(np.ones((pb.n, pb.n))) + pb.n * np.eye(pb.n)
    with pytest.raises(ProblemError, match="couples the rows of different experts"):
        HardConstraintMoE(pb, experts=2, partition="rcb", row_scale=RowTransform(L))
