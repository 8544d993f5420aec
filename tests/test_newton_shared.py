"""One Newton loop (femoe.layers.newton) under the reference solve and the layers: the same
iterates, one info base class with a reason, one documented default per front end, one linear-solver
registry (aliases, no dense factorisation for the reference), and factorisation reuse."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import femoe
from femoe.errors import ConvergenceError, ConvergenceWarning, NonFiniteError
from femoe.layers import (REASONS, REFERENCE_NEWTON, NewtonInfoBase, NewtonOptions, NewtonSolveInfo, NewtonSystem,
                          check_newton, newton, nonlinear_solve)
from femoe.linalg import choose_solver, make_solver
from femoe.reference import NewtonInfo, linear_solve
from femoe.sparse import BatchedCSR, CSRPattern

F64 = torch.float64


def _scalar_system(R, dR, **opts) -> NewtonSystem:
    """``R(x) = 0`` for one unknown per sample, with a 1 x 1 CSR Jacobian."""
    pattern = CSRPattern(np.array([0, 1]), np.array([0]), (1, 1))
    return NewtonSystem(lambda x, p: R(x), lambda x, p: (R(x), BatchedCSR(pattern, dR(x))), [], {},
                        NewtonOptions(**opts), [])


def test_the_reference_and_the_layers_take_the_same_newton_steps(make_square):
    pb = make_square("nonlinear", 3, f=40.0)
    _, info = femoe.solve(pb, {"f": 40.0})
    # u0 = 0 satisfies the (zero) Dirichlet data: the free-row and all-row norms coincide, and neither
    # line search reaches its floor here, so the layers' solve is the same sequence of iterates
    _, binfo = nonlinear_solve(pb, {"f": 40.0}, return_info=True)
    assert isinstance(info, NewtonInfoBase) and isinstance(binfo, NewtonInfoBase)
    assert info.iterations == int(binfo.iterations[0]) == 6
    np.testing.assert_allclose(info.residual_history[:-1], binfo.residual_history[0, :-1].numpy(), rtol=1e-8)
    assert info.reason == binfo.reason[0] == "converged" and info.residual_norms is info.residual_history
    assert info.line_search_steps == int(binfo.line_search_steps[0]) == 3


def test_each_front_end_tests_the_residual_of_the_system_it_solves(make_square):
    """Reference: Dirichlet values imposed on u0, the free rows tested (and solved). Layers: every
    row, Dirichlet rows included, from u0 as given."""
    pb = make_square("poisson", 3, f=1.0, dirichlet={"left": 1.0, "right": 0.0})
    _, info = femoe.solve(pb, {"f": 1.0})
    u0 = np.zeros(pb.n)
    u0[pb.dirichlet_dofs] = pb.dirichlet_values({"f": 1.0}, batch=1)[0].numpy()
    R = pb.residual(torch.as_tensor(u0), {"f": 1.0}).numpy()
    assert info.residual_history[0] == pytest.approx(np.linalg.norm(R[pb.free_dofs]), rel=1e-12)
    _, binfo = nonlinear_solve(pb, {"f": 1.0}, return_info=True)
    R0 = pb.residual(torch.zeros(pb.n, dtype=F64), {"f": 1.0})
    assert float(binfo.initial_residual_norms[0]) == pytest.approx(float(torch.linalg.vector_norm(R0)), rel=1e-12)
    assert float(binfo.initial_residual_norms[0]) > info.residual_history[0]


def test_strict_defaults_per_front_end(make_square):
    """femoe.solve raises by default (a data generator never stores an unconverged solve);
    nonlinear_solve warns and flags (training goes on)."""
    pb = make_square("nonlinear", 3, f=40.0)
    with pytest.raises(ConvergenceError, match="did not converge.*maxiter") as err:
        femoe.solve(pb, {"f": 40.0}, maxiter=1)
    assert isinstance(err.value.info, NewtonInfo) and err.value.info.reason == "maxiter"
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        _, info = femoe.solve(pb, {"f": 40.0}, maxiter=1, strict=False)
    assert not info.converged and info.iterations == 1 and len(info.residual_history) == 2
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        _, binfo = nonlinear_solve(pb, {"f": 40.0}, maxiter=1, return_info=True)
    assert binfo.reason == ("maxiter",)


def test_reference_defaults_are_documented():
    assert REFERENCE_NEWTON == {"min_step": 1e-3, "allow_dense": False}
    assert NewtonOptions().min_step == 1e-4 and NewtonOptions().allow_dense


def test_reasons_from_the_loop():
    # log x = 0 from x = 3 without line search: the full step lands at x < 0, NaN
    system = _scalar_system(torch.log, lambda x: 1 / x, line_search=False)
    x, _, info = newton(system, torch.tensor([[3.0], [1.2]], dtype=F64), {})
    assert info.reason == ("non-finite", "converged") and set(info.reason) <= set(REASONS)
    assert float(x[0, 0]) == 3.0 and info.converged.tolist() == [False, True]
    assert info.residual_history.shape == (2, int(info.iterations.max()) + 1)
    with pytest.raises(NonFiniteError, match="non-finite at Newton step 1 for sample 0"):
        check_newton(info, strict=False, what="log")
    # with the line search the same start converges
    x, _, info = newton(_scalar_system(torch.log, lambda x: 1 / x), torch.tensor([[3.0]], dtype=F64), {})
    assert info.reason == ("converged",) and abs(float(x) - 1) < 1e-8 and int(info.line_search_steps) >= 1
    # x^2 + 1 has no root: the steps stall near its minimum
    system = _scalar_system(lambda x: x**2 + 1, lambda x: 2 * x, maxiter=30)
    _, _, info = newton(system, torch.tensor([[0.7]], dtype=F64), {})
    assert info.reason == ("stalled line search",)
    with pytest.warns(ConvergenceWarning, match="stalled line search"):
        check_newton(info, strict=False, what="x^2 + 1")


def test_one_registry_picks_for_both(make_square):
    pb = make_square("poisson", 3, f=1.0, dirichlet="all")
    _, J = pb.residual_and_jacobian(torch.zeros(pb.n, dtype=F64), {"f": 1.0})
    assert choose_solver(J)[0] == "dense_lu"  # small: dense, for the layers
    assert choose_solver(J, allow_dense=False) == ("superlu", {})  # the reference: sparse at every size
    sub, pos = J.pattern.principal_submatrix(pb.free_dofs)
    A = BatchedCSR(sub, J.values[:, pos])
    assert choose_solver(A)[0] == "dense_cholesky"
    solver = make_solver("amg-cg", A)
    assert solver.name == "cg" and solver.preconditioner.name == "amg"
    K = J.to_scipy(0)[pb.free_dofs][:, pb.free_dofs]
    np.testing.assert_array_equal(sub.to_scipy(A.values[0].numpy()).toarray(), K.toarray())
    b = np.arange(K.shape[0], dtype=float)
    x, it, name = linear_solve(K, b)
    assert name == "superlu" and it == 1
    y, it_cg, name_cg = linear_solve(sp.csc_matrix(K), b, "amg-cg", tol=1e-12)
    assert name_cg == "cg" and it_cg >= 1
    np.testing.assert_allclose(y, x, rtol=1e-9)
    _, info = femoe.solve(pb, {"f": 1.0}, linear_solver="amg-cg")
    assert info.linear_solver == "cg" and info.converged


def test_reused_factorisations_reach_the_same_solution(make_square):
    pb = make_square("nonlinear", 4, f=40.0)
    u, info = femoe.solve(pb, {"f": 40.0})
    assert info.linear_setups == info.iterations
    u_re, info_re = femoe.solve(pb, {"f": 40.0}, max_jacobian_age=10)
    assert info_re.converged and info_re.linear_setups < info_re.iterations
    np.testing.assert_allclose(u_re, u, rtol=0, atol=1e-9 * np.abs(u).max())
    # the layers take the same option; the adjoint still uses J(u*)
    f = torch.tensor(40.0, dtype=F64, requires_grad=True)
    opts = dict(atol=1e-12, rtol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        g = torch.autograd.grad(nonlinear_solve(pb, {"f": f}, **opts).sum(), f)[0]
    from femoe.layers import NewtonRoot, implicit_root, newton_options

    def res(x, p):
        return pb.residual(x, {"f": p["f"]}).reshape(1, -1)

    def res_jac(x, p):
        R, J = pb.residual_and_jacobian(x, {"f": p["f"]})
        return R.reshape(1, -1), J

    out: list[NewtonSolveInfo] = []
    system = NewtonSystem(res, res_jac, ["f"], {}, newton_options(1e-12, 0.0, 50, "auto", True, {},
                                                                  max_jacobian_age=10), out)
    x = implicit_root(NewtonRoot(system, torch.zeros(1, pb.n, dtype=F64)), f)
    assert out[0].all_converged and out[0].linear_setups < int(out[0].iterations[0])
    torch.testing.assert_close(torch.autograd.grad(x.sum(), f)[0], g, rtol=1e-8, atol=0)


def test_public_front_ends_take_max_jacobian_age(make_square, make_heat):
    """nonlinear_solve, nonlinear_step and PatchConstraint pass max_jacobian_age to Newton: the
    same solution and gradient with fewer linear set-ups than steps."""
    from femoe.experts import PatchConstraint
    from femoe.layers import nonlinear_step

    pb = make_square("nonlinear", 4, f=40.0)
    opts = dict(atol=1e-12, rtol=0.0)
    f = torch.tensor(40.0, dtype=F64, requires_grad=True)
    u1, i1 = nonlinear_solve(pb, {"f": f}, return_info=True, **opts)
    uk, ik = nonlinear_solve(pb, {"f": f}, return_info=True, max_jacobian_age=10, **opts)
    assert ik.all_converged and ik.linear_setups < int(ik.iterations[0]) and i1.linear_setups == int(i1.iterations[0])
    torch.testing.assert_close(uk, u1, rtol=0, atol=1e-9 * float(u1.detach().abs().max()))
    g1, gk = (torch.autograd.grad(u.sum(), f)[0] for u in (u1, uk))
    torch.testing.assert_close(gk, g1, rtol=1e-8, atol=0)
    with pytest.raises(femoe.errors.ProblemError, match="max_jacobian_age"):
        nonlinear_solve(pb, {"f": 40.0}, max_jacobian_age=0)
    from femoe.helpers import dot, grad

    heat = make_heat(lambda u, v, w: dot((0.05 + u**2) * grad(u), grad(v)), 4, theta=1.0, dirichlet={"left": 1.0})
    u_old = torch.zeros(heat.n, dtype=F64)
    s1, j1 = nonlinear_step(heat, u_old, 0.5, return_info=True, **opts)
    sk, jk = nonlinear_step(heat, u_old, 0.5, return_info=True, max_jacobian_age=10, **opts)
    assert jk.all_converged and jk.linear_setups <= j1.linear_setups
    torch.testing.assert_close(sk, s1, rtol=0, atol=1e-9)
    layer = PatchConstraint(pb, 2, partition="rcb", max_jacobian_age=10)
    assert layer._opts.max_jacobian_age == 10
