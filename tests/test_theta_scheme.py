"""The time scheme of a Problem (femoe.problem.ThetaScheme): one place for the theta formula,
used by the one-step, trajectory and Jacobian paths alike."""

import pytest
import torch

from femoe.errors import ProblemError
from femoe.helpers import dot, grad
from femoe.problem import ThetaScheme

F64 = torch.float64


@pytest.mark.parametrize("theta", [0.0, 0.5, 1.0])
def test_rows_and_jacobian_are_the_theta_formula(theta):
    g = torch.Generator().manual_seed(0)
    S1, S0, A1, A0 = (torch.randn(3, 5, dtype=F64, generator=g) for _ in range(4))
    sch = ThetaScheme(theta)
    torch.testing.assert_close(sch.rows(S1, S0, A1, A0, 0.1), (S1 - S0) / 0.1 + theta * A1 + (1 - theta) * A0)
    torch.testing.assert_close(sch.new_level_jacobian(S1, A1, 0.1), S1 / 0.1 + theta * A1)
    # the weight-0 term is not read
    if theta == 1.0:
        sch.rows(S1, S0, A1, None, 0.1)
    if theta == 0.0:
        sch.rows(S1, S0, None, A0, 0.1)
        sch.new_level_jacobian(S1, None, 0.1)


def test_theta_outside_the_unit_interval_is_refused():
    with pytest.raises(ProblemError, match="theta must lie in"):
        ThetaScheme(1.5)


def _ramp(x, t):  # boundary data that depend on the time
    return 0.5 + 2.0 * t + 0 * x[0]


@pytest.mark.parametrize("theta,dirichlet,in_time", [
    (0.0, {"left": 0.0}, False), (0.5, {"left": 0.0}, False), (1.0, {"left": 0.0}, False),
    (0.5, {"left": 0.7, "right": _ramp}, True), (1.0, {"right": _ramp}, True)])
def test_the_step_and_trajectory_paths_agree(make_heat, theta, dirichlet, in_time):
    pb = make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)) + 0.3 * u**2 * v, 3, theta=theta,
                   dirichlet=dirichlet)
    assert pb.scheme == ThetaScheme(theta) and pb.theta == theta
    # time-independent data are taken once for every level of a trajectory
    assert pb.dirichlet_depends_on_time is in_time
    g = torch.Generator().manual_seed(1)
    U = torch.randn(2, 4, pb.n, dtype=F64, generator=g)
    dt = 0.1
    R = pb.trajectory_residual(U[:, 1:], U[:, 0], dt, t0=0.0)
    for k in range(1, 4):
        Rk, J = pb.step_residual(U[:, k], U[:, k - 1], dt, t_new=k * dt, jacobian=True)
        torch.testing.assert_close(R[:, k - 1], Rk, rtol=1e-12, atol=1e-12)
    _, P, _ = pb.trajectory_residual_and_jacobians(U, dt)
    torch.testing.assert_close(P.values.reshape(2, 4, -1)[:, 3], J.values, rtol=1e-12, atol=1e-12)
