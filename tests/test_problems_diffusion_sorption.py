"""Diffusion-sorption 1D: the reference marches the Problem's own equations, and agrees with an
independent finite-volume method-of-lines solution."""

import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.integrate import solve_ivp

from femoe.problems import get_problem
from femoe.problems.diffusion_sorption_1d import _Operator, march, retardation, storage_value

SPEC = get_problem("diffusion_sorption_1d")


def test_storage_derivative_is_the_retardation_factor():
    p = SPEC.defaults
    u = np.linspace(1e-4, 1.0, 50)
    h = 1e-7
    fd = (storage_value(u + h, p) - storage_value(u - h, p)) / (2 * h)
    np.testing.assert_allclose(fd, retardation(u, p), rtol=1e-6)
    c = (1 - 0.29) / 0.29 * 2880 * 3.5e-4
    np.testing.assert_allclose(retardation(u, p), 1 + c * 0.874 * (u + 1e-6) ** (0.874 - 1), rtol=1e-14)


@pytest.mark.parametrize("theta", [0.5, 1.0])
def test_fast_reference_step_solves_the_problem_step_residual(theta):
    problem = SPEC.build(n_cells=64, theta=theta)
    op = _Operator(problem)
    rng = np.random.default_rng(0)
    u_old = 0.2 * rng.random(problem.n)
    u_new, iters = op.step(u_old, 0.7, theta, 0.7)
    assert iters >= 2
    R = problem.step_residual(torch.tensor(u_new), torch.tensor(u_old), 0.7).numpy()
    assert np.abs(R).max() < 1e-12
    assert u_new[problem.dirichlet_dofs].tolist() == [1.0]


def test_filling_from_zero_is_monotone():
    # from u = 0 the stored mass grows, the outflow value stays below the inflow value, and the
    # Galerkin (consistent-mass) undershoot ahead of the front stays tiny (it is why m(u) is
    # extended below 0)
    problem = SPEC.build(n_cells=128, T=50.0, n_saved=11, substeps=16, grading=4)
    times, U = march(problem, np.zeros(problem.n))
    M = np.array([storage_value(u, problem.config).mean() for u in U])
    assert np.all(np.diff(M) > 0)
    assert np.all(U[:, -1] < U[:, 0] + 1e-12)
    assert U.min() > -1e-4


def fv_solution(p, n_cells, u0, times):
    """Cell-centred finite volumes + BDF (scipy), written independently of femoe."""
    h = 1.0 / n_cells
    D = p["D"]
    c = (1 - p["phi"]) / p["phi"] * p["rho_s"] * p["k_f"]
    beta = 2 * D / h

    def R(u):
        up = np.maximum(u, 0.0)
        return 1.0 + np.where(u >= 0, c * p["n_f"] * (up + p["eps"]) ** (p["n_f"] - 1), 0.0)

    def rhs(t, u):
        flux = np.empty(n_cells + 1)  # flux F = -D u_x at faces
        flux[0] = -D * (u[0] - p["u_left"]) / (h / 2)
        flux[1:-1] = -D * (u[1:] - u[:-1]) / h
        flux[-1] = beta / (1 + beta) * u[-1]  # outflow: F = u_b, u_b = -D (u_b - u_N) / (h / 2)
        return (flux[:-1] - flux[1:]) / (h * R(u))

    sparsity = sp.diags([1.0, 1.0, 1.0], [-1, 0, 1], shape=(n_cells, n_cells))
    sol = solve_ivp(rhs, (times[0], times[-1]), np.full(n_cells, u0), method="BDF", t_eval=times,
                    jac_sparsity=sparsity, rtol=1e-9, atol=1e-11)
    assert sol.success
    return sol.y.T


def test_reference_agrees_with_finite_volumes_at_1024_cells():
    problem = SPEC.build()
    assert problem.config["n_cells"] == 1024 and problem.config["n_saved"] == 101
    u0 = 0.1
    t0 = time.perf_counter()
    times, U = SPEC.reference(problem, np.full(problem.n, u0))
    t_fem = time.perf_counter() - t0
    t0 = time.perf_counter()
    V = fv_solution(problem.config, 1024, u0, times)
    t_fv = time.perf_counter() - t0
    x = problem.doflocs[0]
    order = np.argsort(x)
    Uc = 0.5 * (U[:, order][:, :-1] + U[:, order][:, 1:])  # FEM at cell centres
    rel = np.linalg.norm(Uc[1:] - V[1:]) / np.linalg.norm(V[1:])
    print(f"FEM {t_fem:.1f} s, FV {t_fv:.1f} s, relative L2 space-time {rel:.2e}")
    assert rel < 5e-3


def test_random_field_initial_conditions_are_smooth_and_in_range():
    problem = SPEC.build(ic="random_field", n_cells=256)
    X = SPEC.sample_inputs(np.random.default_rng(1), 5, problem)
    assert X.shape == (5, 257)
    assert X.min() > 0 and X.max() < 0.2
    assert np.abs(np.diff(X, axis=1)).max() < 0.05  # resolved: no jumps between neighbours
    assert X.std(axis=1).min() > 1e-3  # not constant in x


@pytest.mark.slow
def test_time_step_refinement_meets_1e_5():
    problem = SPEC.build()
    u0 = np.full(problem.n, 0.1)
    _, U64 = march(problem, u0, substeps=64)
    _, U128 = march(problem, u0, substeps=128)
    change = np.linalg.norm(U128 - U64, axis=1)[1:] / np.linalg.norm(U128, axis=1)[1:]
    assert change.max() < 1e-5
