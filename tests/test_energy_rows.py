"""Energy rows (``solver.row_weights = "energy"``): the residual measured in the dual norm of
a reference stiffness, so that basis mode picks the Ritz (energy-best) member of span(B)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import skfem as fe
import torch

from femoe.errors import ConfigError
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.problem import Problem
from femoe.train.rows import energy_rows

F64 = torch.float64


def poisson(coefficient=False):
    mesh = fe.MeshTri().refined(3).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    if coefficient:  # -div(kappa grad u) = f with a nodal kappa (no default: 1 for the reference)
        return Problem(basis, lambda u, v, w: w.kappa * dot(grad(u), grad(v)) - w.f * v,
                       dirichlet={k: 0.0 for k in ("left", "right", "top", "bottom")},
                       coefficients={"kappa": "nodal"}, defaults={"f": 1.0})
    return Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - w.f * v,
                   dirichlet={k: 0.0 for k in ("left", "right", "top", "bottom")}, defaults={"f": 1.0})


def _stiffness(pb, params=None):
    _, J = pb.residual_and_jacobian(torch.zeros(1, pb.n, dtype=F64), params or {})
    return sp.csr_matrix((J.values[0].numpy(), J.pattern.indices, J.pattern.indptr), shape=(pb.n, pb.n)).toarray()


def test_energy_rows_measure_the_residual_in_the_inverse_stiffness_norm():
    pb = poisson()
    T = energy_rows(pb)
    K = _stiffness(pb)
    d = pb.dirichlet_dofs
    K0 = K.copy()
    K0[d, :] = 0
    K0[:, d] = 0
    K0[d, d] = 1
    r = torch.randn(2, pb.n, dtype=F64, generator=torch.Generator().manual_seed(0))
    y = T(r)
    want = np.einsum("bi,bi->b", r.numpy(), np.linalg.solve(K0, r.numpy().T).T)
    np.testing.assert_allclose((y**2).sum(1).numpy(), want, rtol=1e-10)
    # a Jacobian's columns transform like rows
    X = torch.randn(2, pb.n, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(T(X)[..., 1], T(X[..., 1]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batch", [1, 2])
def test_basis_mode_with_energy_rows_returns_the_ritz_member_of_the_span(batch):
    pb = poisson()
    K = _stiffness(pb)
    free = pb.free_dofs
    f = torch.tensor([1.0, 3.0][:batch], dtype=F64)
    # the exact discrete solution u* (zero on the Dirichlet DOFs)
    ustar = np.zeros((batch, pb.n))
    for b in range(batch):
        R0 = pb.residual(torch.zeros(1, pb.n, dtype=F64), {"f": f[b:b + 1]})[0].numpy()
        ustar[b, free] = np.linalg.solve(K[np.ix_(free, free)], -R0[free])
    g = torch.Generator().manual_seed(2)
    B = torch.randn(batch, pb.n, 5, dtype=F64, generator=g)
    B[:, pb.dirichlet_dofs] = 0.0  # the basis satisfies the boundary condition
    layer = HardConstraint(pb, rho=1e-14, tol=1e-14, row_scale=energy_rows(pb))
    u, info = layer(B, {"f": f})
    assert info.all_converged
    mass_u, _ = HardConstraint(pb, rho=1e-14, tol=1e-14)(B, {"f": f})
    for b in range(batch):
        Bb = B[b].numpy()
        w = np.linalg.solve(Bb.T @ K @ Bb, Bb.T @ K @ ustar[b])  # energy projection of u*
        ritz = Bb @ w
        np.testing.assert_allclose(u[b].numpy(), ritz, atol=1e-9 * np.abs(ritz).max())

        def energy_error(v):
            e = v - ustar[b]
            return e @ K @ e

        # the mass-scaled rows pick another member, worse in the energy norm
        assert energy_error(mass_u[b].numpy()) > 1.01 * energy_error(ritz)


def test_gradcheck_with_energy_rows():
    pb = poisson(coefficient=True)
    layer = HardConstraint(pb, tol=1e-14, row_scale=energy_rows(pb))
    g = torch.Generator().manual_seed(3)
    B = torch.randn(2, pb.n, 3, dtype=F64, generator=g).requires_grad_(True)
    kappa = (1.0 + torch.rand(2, pb.n, dtype=F64, generator=g)).requires_grad_(True)

    def fn(B, kappa):
        u, info = layer(B, {"kappa": kappa})
        assert info.all_converged
        return u

    assert torch.autograd.gradcheck(fn, (B, kappa), fast_mode=True)


def test_energy_rows_are_refused_where_they_do_not_apply():
    mesh = fe.MeshTri().refined(2).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    helmholtz = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - 400.0 * u * v - v,
                        dirichlet={"left": 0.0})
    with pytest.raises(ConfigError, match="not symmetric positive definite"):
        energy_rows(helmholtz)
    heat = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - v, storage="mass", dirichlet={"left": 0.0})
    with pytest.raises(ConfigError, match="steady problems"):
        energy_rows(heat)
    from femoe.train.config import config_from_dict

    with pytest.raises(ConfigError, match="row_weights"):  # a name outside the choices
        config_from_dict({"name": "x", "methods": ["pihc", "moe"], "problem": {"name": "darcy_2d"},
                          "solver": {"row_weights": "energies"}})
    # the MoE takes them (one block per expert: tests/test_energy_rows_moe.py)
    config_from_dict({"name": "x", "methods": ["pihc", "moe"], "problem": {"name": "darcy_2d"},
                      "solver": {"row_weights": "energy_sample"}})


def test_per_sample_energy_rows_give_each_sample_its_own_ritz_member():
    from femoe.layers import SampleEnergyRows

    pb = poisson(coefficient=True)
    rows = energy_rows(pb, per_sample=True)
    assert isinstance(rows, SampleEnergyRows)
    g = torch.Generator().manual_seed(4)
    kappa = torch.exp(torch.randn(2, pb.n, dtype=F64, generator=g))
    free = pb.free_dofs
    B = torch.randn(2, pb.n, 5, dtype=F64, generator=g)
    B[:, pb.dirichlet_dofs] = 0.0
    u, info = HardConstraint(pb, rho=1e-14, tol=1e-14, row_scale=rows)(B, {"kappa": kappa})
    assert info.all_converged
    for b in range(2):
        K = _stiffness(pb, {"kappa": kappa[b:b + 1]})
        R0 = pb.residual(torch.zeros(1, pb.n, dtype=F64), {"kappa": kappa[b:b + 1]})[0].numpy()
        ustar = np.zeros(pb.n)
        ustar[free] = np.linalg.solve(K[np.ix_(free, free)], -R0[free])
        # the rows' norm is the sample's own inverse-stiffness norm
        r = torch.randn(1, pb.n, dtype=F64, generator=g)
        K0 = K.copy()
        d = pb.dirichlet_dofs
        K0[d, :], K0[:, d] = 0, 0
        K0[d, d] = 1
        y = rows(r, {"kappa": kappa[b:b + 1]})
        np.testing.assert_allclose(float((y**2).sum()), float(r[0] @ torch.as_tensor(np.linalg.solve(K0, r[0].numpy()))),
                                   rtol=1e-10)
        Bb = B[b].numpy()
        ritz = Bb @ np.linalg.solve(Bb.T @ K @ Bb, Bb.T @ K @ ustar)
        np.testing.assert_allclose(u[b].numpy(), ritz, atol=1e-9 * np.abs(ritz).max())


def test_gradcheck_with_per_sample_energy_rows():
    pb = poisson(coefficient=True)
    layer = HardConstraint(pb, tol=1e-14, row_scale=energy_rows(pb, per_sample=True))
    g = torch.Generator().manual_seed(5)
    B = torch.randn(2, pb.n, 3, dtype=F64, generator=g).requires_grad_(True)
    kappa = (1.0 + torch.rand(2, pb.n, dtype=F64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda B, kappa: layer(B, {"kappa": kappa})[0], (B, kappa), fast_mode=True)


def test_per_sample_factors_follow_the_parameter_values():
    pb = poisson(coefficient=True)
    rows = energy_rows(pb, per_sample=True)
    g = torch.Generator().manual_seed(6)
    kappa = 1.0 + torch.rand(1, pb.n, dtype=F64, generator=g)
    r = torch.randn(1, pb.n, dtype=F64, generator=g)
    with torch.no_grad():
        y1 = rows(r, {"kappa": kappa})
        kappa.mul_(3.0)  # the same tensor, other values: the cached factor must not be reused
        y2 = rows(r, {"kappa": kappa})
        y3 = energy_rows(pb, per_sample=True)(r, {"kappa": kappa})
    torch.testing.assert_close(y2, y3)
    free, d = pb.free_dofs, pb.dirichlet_dofs  # K_ff scales with kappa (L_ff^{-1} by 1/sqrt(3)), the
    torch.testing.assert_close(y2[:, free], y1[:, free] / 3.0**0.5)  # Dirichlet block is the identity
    torch.testing.assert_close(y2[:, d], y1[:, d])
