"""The soft-constraint loss: zero at the discrete solution, the weak-form residual norm, autograd gradients."""

import numpy as np
import pytest
import torch

from femoe.errors import ConfigError, NonFiniteError, ShapeError
from femoe.helpers import dot, grad
from femoe.layers import nonlinear_solve, soft_residual_loss, soft_trajectory_loss, solve_trajectory

F64 = torch.float64


@pytest.fixture
def pb(make_square):
    """-div((1 + u^2) grad u) = f, u = 0 on "left" and 0.5 on "right", f given by each test."""
    return make_square("nonlinear", 2, dirichlet={"left": 0.0, "right": 0.5})


@pytest.fixture
def heat(make_heat):
    """u_t = 0.3 u_xx + 1, implicit Euler, u = 0 on "left", 8 cells."""
    return make_heat(lambda u, v, w: w.D * dot(grad(u), grad(v)) - v, 3, theta=1.0, dirichlet={"left": 0.0}, D=0.3)


def test_zero_at_discrete_solution_and_equal_to_residual_norm(pb):
    f = torch.tensor([2.0, 7.0], dtype=F64)
    u = nonlinear_solve(pb, {"f": f}, atol=1e-13, rtol=0)
    assert soft_residual_loss(pb, u, {"f": f}).item() < 1e-24
    u_hat = u + 0.01 * torch.randn(u.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    R = pb.residual(u_hat, {"f": f})
    per = soft_residual_loss(pb, u_hat, {"f": f}, reduction="none")
    torch.testing.assert_close(per, (R**2).sum(1))
    torch.testing.assert_close(soft_residual_loss(pb, u_hat, {"f": f}, reduction="sum"), per.sum())
    free = torch.as_tensor(pb.free_dofs)
    wts = torch.linspace(1, 2, free.numel(), dtype=F64)
    torch.testing.assert_close(soft_residual_loss(pb, u_hat, {"f": f}, rows=free, weights=wts),
                               ((wts * R[:, free]) ** 2).sum(1).mean())


def test_gradient_matches_autograd_of_the_residual_and_gradcheck(pb):
    u_hat = torch.tensor(np.random.default_rng(1).random((2, pb.n)), dtype=F64, requires_grad=True)
    f = torch.tensor([1.0, 3.0], dtype=F64, requires_grad=True)
    g = torch.autograd.grad(soft_residual_loss(pb, u_hat, {"f": f}), (u_hat, f))
    # d/du mean_b ||R_b||^2 = 2 J_b^T R_b / batch
    R, J = pb.residual_and_jacobian(u_hat.detach(), {"f": f.detach()})
    torch.testing.assert_close(g[0], 2 * J.rmatvec(R) / 2)
    assert torch.autograd.gradcheck(lambda u, f: soft_residual_loss(pb, u, {"f": f}), (u_hat, f))


def test_trajectory_loss_zero_on_solution_with_initial_condition_rows(heat):
    pb = heat
    x = torch.as_tensor(pb.doflocs[0])
    u0 = 1.0 + x
    U, _ = solve_trajectory(pb, u0, 0.1, 3, atol=1e-13, rtol=0)
    assert soft_trajectory_loss(pb, U[None], 0.1, u0=u0).item() < 1e-24
    V = U[None].clone()
    V[0, 0] += 0.1  # level 0 off the initial condition by 0.1: IC rows (paper weights 1/|u0|) see it
    no_ic = soft_trajectory_loss(pb, V, 0.1)
    with_ic = soft_trajectory_loss(pb, V, 0.1, u0=u0)
    torch.testing.assert_close(with_ic - no_ic, ((0.1 / u0) ** 2).sum())
    Vg = V.clone().requires_grad_(True)
    u0g = u0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda V, u0: soft_trajectory_loss(pb, V, 0.1, u0=u0), (Vg, u0g))


def test_errors(pb, heat):
    with pytest.raises(ShapeError, match="u_hat must have shape"):
        soft_residual_loss(pb, torch.zeros(3, dtype=F64))
    bad = torch.zeros(pb.n, dtype=F64)
    bad[2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"u_hat.*\(2,\)"):
        soft_residual_loss(pb, bad, {"f": 1.0})
    with pytest.raises(ConfigError, match="Pick one of"):
        soft_residual_loss(pb, torch.zeros(pb.n, dtype=F64), {"f": 1.0}, reduction="max")
    with pytest.raises(ShapeError, match="U_hat must have shape"):
        soft_trajectory_loss(heat, torch.zeros(1, 1, heat.n, dtype=F64), 0.1)
