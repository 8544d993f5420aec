"""Differentiable Newton solves: forward against the reference solver, adjoint gradients by gradcheck."""

import warnings

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.errors import ConvergenceError, ConvergenceWarning, NonFiniteError, ShapeError
from femoe.helpers import dot, grad
from femoe.layers import nonlinear_solve, nonlinear_step, solve_trajectory
from femoe.problem import Problem
from femoe.reference import solve, solve_transient

F64 = torch.float64
TIGHT = dict(atol=1e-12, rtol=0.0)


def quasilinear(u, v, w):
    # -div((kappa + u^2) grad u) = f
    return dot((w.kappa + u**2) * grad(u), grad(v)) - w.f * v


def _problem(refine=2, **kw):
    mesh = fe.MeshTri().refined(refine).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    return Problem(basis, quasilinear, dirichlet={"left": 0.0, "right": "g"}, defaults={"kappa": 1.0, "g": 0.2}, **kw)


def test_newton_matches_reference_solver_and_reports():
    pb = _problem(3)
    f = 8.0 + 4.0 * torch.as_tensor(pb.doflocs[0])
    u, info = nonlinear_solve(pb, {"f": f}, return_info=True)
    ref, _ = solve(pb, {"f": f})
    np.testing.assert_allclose(u.numpy(), ref, atol=1e-10)
    assert u.shape == (pb.n,) and info.all_converged and info.iterations.item() >= 3
    assert info.residual_norms.item() <= 1e-10 and info.linear_solver == "dense_lu"


def test_batch_of_parameters_solves_each_sample():
    pb = _problem(2)
    f = torch.tensor([1.0, 5.0, 20.0], dtype=F64)
    u = nonlinear_solve(pb, {"f": f})
    assert u.shape == (3, pb.n)
    for i in range(3):
        torch.testing.assert_close(u[i], nonlinear_solve(pb, {"f": float(f[i])}), atol=1e-10, rtol=0)


def test_gradcheck_wrt_source_field_and_coefficient_field():
    pb = _problem(1, coefficients={"kappa": "element"})
    rng = np.random.default_rng(0)
    f = torch.tensor(5 + rng.random((2, pb.n)), dtype=F64, requires_grad=True)
    kappa = torch.tensor(0.5 + rng.random((2, pb.mesh.nelements)), dtype=F64, requires_grad=True)
    g = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)

    def fn(f, kappa, g):
        return nonlinear_solve(pb, {"f": f, "kappa": kappa, "g": g}, **TIGHT)

    assert torch.autograd.gradcheck(fn, (f, kappa, g))


def test_adjoint_gradient_equals_dense_implicit_formula():
    pb = _problem(2)
    f = torch.full((pb.n,), 6.0, dtype=F64, requires_grad=True)
    u = nonlinear_solve(pb, {"f": f}, **TIGHT)
    weights = torch.linspace(0, 1, pb.n, dtype=F64)
    (gf,) = torch.autograd.grad((weights * u).sum(), f)
    # dense: du/df = -J^{-1} dR/df, and dR/df = -M_f (the load matrix), so dL/df = (J^{-T} w)^T M_f
    ud = u.detach()
    J = pb.jacobian(ud, {"f": f.detach()}).to_dense()[0]
    dRdf = torch.autograd.functional.jacobian(lambda ff: pb.residual(ud, {"f": ff}), f.detach())
    expected = -torch.linalg.solve(J.T, weights) @ dRdf
    torch.testing.assert_close(gf, expected, atol=1e-11, rtol=1e-9)


@pytest.fixture
def heat(make_heat):
    """u_t = div((D + u^2) grad u) + s, D = 0.1, s = 1, Crank-Nicolson, u = 0 on "left", 8 cells."""
    return make_heat(lambda u, v, w: dot((w.D + u**2) * grad(u), grad(v)) - w.s * v, 3, theta=0.5,
                     dirichlet={"left": 0.0}, D=0.1, s=1.0)


def test_theta_step_matches_reference_and_gradchecks(heat):
    pb = heat
    x = torch.as_tensor(pb.doflocs[0])
    u_old = (torch.sin(np.pi * x / 2)).unsqueeze(0).repeat(2, 1).requires_grad_(True)
    D = torch.tensor([0.1, 0.3], dtype=F64, requires_grad=True)
    u1 = nonlinear_step(pb, u_old, 0.05, {"D": D}, t_new=0.05, **TIGHT)
    _, ref, _ = solve_transient(pb, u_old[0].detach().numpy(), 0.05, 1, {"D": 0.1})
    np.testing.assert_allclose(u1[0].detach().numpy(), ref[1], atol=1e-10)

    def fn(u_old, D):
        return nonlinear_step(pb, u_old, 0.05, {"D": D}, t_new=0.05, **TIGHT)

    assert torch.autograd.gradcheck(fn, (u_old, D))


def test_trajectory_gradcheck_wrt_initial_condition_and_parameter(heat):
    pb = heat
    x = torch.as_tensor(pb.doflocs[0])
    u0 = (x * (2 - x)).requires_grad_(True)
    s = torch.tensor(1.5, dtype=F64, requires_grad=True)

    def fn(u0, s):
        U, infos = solve_trajectory(pb, u0, 0.1, 3, {"s": s}, **TIGHT)
        assert all(i.all_converged for i in infos)
        return U

    U = fn(u0, s)
    assert U.shape == (4, pb.n)
    _, ref, _ = solve_transient(pb, u0.detach().numpy(), 0.1, 3, {"s": 1.5})
    np.testing.assert_allclose(U.detach().numpy(), ref, atol=1e-10)
    assert torch.autograd.gradcheck(fn, (u0, s))


def test_unconverged_newton_warns_or_raises():
    pb = _problem(2)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        u, info = nonlinear_solve(pb, {"f": 50.0}, maxiter=1, return_info=True)
    assert not info.all_converged and info.iterations.item() == 1
    with pytest.raises(ConvergenceError) as err:
        nonlinear_solve(pb, {"f": 50.0}, maxiter=1, strict=True)
    assert err.value.info is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nonlinear_solve(pb, {"f": 50.0})


def test_nonfinite_and_shape_errors(heat):
    pb = _problem(1)
    f = torch.ones(pb.n, dtype=F64)
    f[3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"params\['f'\].*index \(3,\)"):
        nonlinear_solve(pb, {"f": f})
    with pytest.raises(ShapeError, match="u0 must have shape"):
        nonlinear_solve(pb, {"f": 1.0}, u0=torch.zeros(pb.n + 1, dtype=F64))
    with pytest.raises(NonFiniteError, match="u_old"):
        nonlinear_step(heat, torch.full((heat.n,), float("inf"), dtype=F64), 0.1)
