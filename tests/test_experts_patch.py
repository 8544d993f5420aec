"""Patch mode: interior rows solved, interface rows carry the residual, exact gradients."""

import pytest
import skfem as fe
import torch

from femoe.errors import NonFiniteError, ShapeError
from femoe.experts import PatchConstraint
from femoe.helpers import dot, grad
from femoe.problem import Problem
from femoe.reference import solve

F64 = torch.float64


#: Dirichlet data of the nonlinear problem here: u = 0 on "left", g on "right"
BC = {"left": 0.0, "right": "g"}


def test_interior_rows_hold_and_interface_rows_carry_the_residual(make_square):
    problem = make_square("nonlinear", 3, dirichlet=BC, f=1.0, g=0.5)
    layer = PatchConstraint(problem, 4, partition="rcb", rtol=1e-12, atol=1e-12)
    U = torch.randn(2, problem.n, dtype=F64, generator=torch.Generator().manual_seed(0))
    u, info = layer(U)
    R = problem.residual(u)
    iface = layer._interface
    assert float(R[:, layer.interior].abs().max()) < 1e-10
    assert float(info.residual_interior.max()) < 1e-10
    assert float(info.residual_interface.min()) > 1e-3  # a random field is not a solution
    # continuous: one value per DOF, the network's value on the interface, g on Dirichlet DOFs
    torch.testing.assert_close(u[:, iface], U[:, iface])
    left = problem.basis.get_dofs(problem.mesh.boundaries["left"]).all()
    right = problem.basis.get_dofs(problem.mesh.boundaries["right"]).all()
    assert float(u[:, left].abs().max()) == 0.0
    torch.testing.assert_close(u[:, right], torch.full_like(u[:, right], 0.5))


def test_exact_interface_values_give_the_global_solution(make_square):
    problem = make_square("nonlinear", 3, dirichlet=BC, f=1.0, g=0.5)
    u_ref, _ = solve(problem)
    layer = PatchConstraint(problem, 5)
    noise = torch.randn(1, problem.n, dtype=F64, generator=torch.Generator().manual_seed(1))
    U = torch.tensor(u_ref)[None].clone()
    U[:, layer.interior] += noise[:, layer.interior]  # only interior values are wrong
    u, info = layer(U)
    torch.testing.assert_close(u[0], torch.tensor(u_ref), rtol=0, atol=1e-9)
    assert float(info.residual_interface) < 1e-8


def test_gradcheck_steady_wrt_field_and_parameters(make_square):
    problem = make_square("nonlinear", 2, dirichlet=BC, f=1.0, g=0.5)
    layer = PatchConstraint(problem, 3, partition="rcb", rtol=1e-13, atol=1e-13)
    g = torch.Generator().manual_seed(2)
    U = torch.randn(2, problem.n, dtype=F64, generator=g, requires_grad=True)
    f = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    gD = torch.tensor(0.3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda U, f, gD: layer(U, {"f": f, "g": gD})[0], (U, f, gD))


def test_gradcheck_time_dependent():
    mesh = fe.MeshTri().refined(2).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, lambda u, v, w: w.D * dot((1 + u**2) * grad(u), grad(v)), storage="mass",
                      dirichlet={"left": 0.0}, defaults={"D": 0.1})
    layer = PatchConstraint(problem, 2, partition="rcb", dt=0.05, rtol=1e-13, atol=1e-13)
    g = torch.Generator().manual_seed(3)
    U = torch.randn(1, 3, problem.n, dtype=F64, generator=g, requires_grad=True)
    u0 = torch.rand(1, problem.n, dtype=F64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda U, u0: layer(U, u0=u0)[0], (U, u0))
    u, info = layer(U.detach(), u0=u0.detach())
    assert info.converged.shape == (1, 2)
    R = problem.trajectory_residual(u[:, 1:], u[:, 0], 0.05)
    assert float(R[..., layer.interior].abs().max()) < 1e-10


def test_bad_inputs(make_square):
    problem = make_square("nonlinear", 2, dirichlet=BC, f=1.0, g=0.5)
    layer = PatchConstraint(problem, 2)
    with pytest.raises(ShapeError, match="U_hat must have shape"):
        layer(torch.zeros(1, 3, problem.n, dtype=F64))
    U = torch.zeros(1, problem.n, dtype=F64)
    U[0, 3] = float("inf")
    with pytest.raises(NonFiniteError):
        layer(U)


def test_unconverged_patch_solves_follow_the_layers_policy(make_square):
    """One Newton step cannot solve the nonlinear patches: "flag" warns once per layer, "raise"
    (strict) raises, "exclude" keeps the value and gives the sample no gradient."""
    import warnings

    from femoe.errors import ConvergenceError, ConvergenceWarning

    problem = make_square("nonlinear", 3, dirichlet=BC, f=1.0, g=0.5)
    U = 3.0 * torch.randn(2, problem.n, dtype=F64, generator=torch.Generator().manual_seed(5))
    kw = dict(partition="rcb", rtol=1e-14, atol=1e-14, maxiter=1)
    flag = PatchConstraint(problem, 3, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = flag(U)
        flag(U)
    assert not info.all_converged
    hits = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(hits) == 1 and "policy unconverged='flag'" in str(hits[0].message)
    assert "improve the initial guess" in str(hits[0].message)
    with pytest.raises(ConvergenceError, match="Newton did not converge"):
        PatchConstraint(problem, 3, strict=True, **kw)(U)
    Ug = U.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        u, info = PatchConstraint(problem, 3, unconverged="exclude", **kw)(Ug)
    (g,) = torch.autograd.grad(u.sum(), Ug)
    bad = ~info.converged.reshape(2, -1).all(1)
    assert bool(bad.any())
    assert float(g[bad].abs().max()) == 0.0
