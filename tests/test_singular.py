"""Singular problems are refused with a named error, never solved to an arbitrary answer.

Without a condition that fixes a field's level (pure Neumann, a pressure fixed nowhere, a patch
that nothing anchors), SuperLU returns some solution picked by round-off and Krylov solvers
another one. Each solve path probes the first Jacobian with the constants of every field and
component (femoe.linalg._nullspace) and raises SingularMatrixError naming the field.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import skfem as fe
import torch

import femoe
from femoe.errors import SingularMatrixError
from femoe.experts import PatchConstraint
from femoe.helpers import ddot, div, dot, grad
from femoe.layers import nonlinear_solve
from femoe.linalg import null_probe_hits
from femoe.problem import Problem

MESH = fe.MeshTri().refined(3).with_defaults()


def poisson(**kw):
    basis = fe.Basis(MESH, fe.ElementTriP1())
    f = np.cos(np.pi * basis.doflocs[0])  # mean zero: the singular system is consistent
    return Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - w.f * v, defaults={"f": torch.as_tensor(f)},
                   **kw)


def stokes():
    basis = fe.Basis(MESH, fe.ElementComposite(fe.ElementVector(fe.ElementTriP2()), fe.ElementTriP1()))
    return Problem(basis, lambda u, p, v, q, w: ddot(grad(u), grad(v)) - div(v) * p - q * div(u) - v[1],
                   fields=("u", "p"), dirichlet={t: {"u": 0.0} for t in ("left", "right", "top", "bottom")})


@pytest.mark.parametrize("solve", [
    lambda p: femoe.solve(p),
    lambda p: nonlinear_solve(p, linear_solver="superlu"),
    lambda p: nonlinear_solve(p, linear_solver="cg"),
    lambda p: nonlinear_solve(p),
    lambda p: PatchConstraint(p, 1, partition="rcb")(torch.zeros(1, p.n, dtype=torch.float64)),
], ids=["reference", "superlu", "cg", "auto", "patch-K1"])
def test_pure_neumann_is_refused_on_every_solve_path(solve):
    with pytest.raises(SingularMatrixError, match="constant of field 'u'.*Dirichlet"):
        solve(poisson())


def test_floating_pressure_is_named():
    with pytest.raises(SingularMatrixError, match="field 'p'"):
        femoe.solve(stokes())


def test_free_elastic_body_is_refused_by_component():
    basis = fe.Basis(MESH, fe.ElementVector(fe.ElementTriP1()))
    p = Problem(basis, lambda u, v, w: ddot(grad(u), grad(v)) - v[0] * torch.cos(np.pi * w.x[1]))
    with pytest.raises(SingularMatrixError, match="component 'u_x'"):
        nonlinear_solve(p, linear_solver="superlu")


@pytest.mark.parametrize("kw", [{"dirichlet": {"left": 0.0}}, {"facets": {"right": lambda u, v, w: u * v}}])
def test_anchored_problems_solve_and_agree_across_solvers(kw):
    p = poisson(**kw)
    u_ref, _ = femoe.solve(p)
    u = nonlinear_solve(p, linear_solver="superlu")
    np.testing.assert_allclose(u.numpy(), u_ref, atol=1e-9)


def test_patches_anchored_by_their_interface_are_not_flagged():
    p = poisson()
    u, info = PatchConstraint(p, 4, partition="rcb")(torch.zeros(1, p.n, dtype=torch.float64))
    assert info.all_converged and torch.isfinite(u).all()


def test_probe_is_exact_to_round_off_with_no_false_alarm_on_ill_conditioning():
    n = 50
    L = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).tolil()
    L[0, 0] = L[-1, -1] = 1.0  # Neumann ends: L 1 = 0
    L = sp.csr_matrix(L) * 1e7
    ones = np.ones((1, n))
    assert null_probe_hits(L, ones) == [(0, 0)]
    # a reaction 1e-12 times smaller than the stiffness: condition ~1e12, but not singular
    assert null_probe_hits(L + 1e-5 * sp.identity(n), ones) == []
    # a probe on part of the DOFs only is not a null vector
    half = np.zeros((1, n))
    half[0, : n // 2] = 1.0
    assert null_probe_hits(L, half) == []
