"""Navier-Stokes 2D: periodic mesh, the reference integrates the Problem's own semi-discretisation,
invariants, and (slow) the comparison with a pseudo-spectral solution."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from femoe.problems import get_problem
from femoe.problems.navier_stokes_2d import VorticitySolver, energy_enstrophy

SPEC = get_problem("navier_stokes_2d")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def problem():
    return SPEC.build()


@pytest.fixture(scope="module")
def trajectory(problem):
    omega0 = SPEC.sample_inputs(np.random.default_rng(0), 1, problem)[0]
    return SPEC.reference(problem, omega0)


def test_periodic_identification(problem):
    mesh = problem.orig_mesh
    iw = problem.basis.split_indices()[0]
    assert iw.size == mesh.nvertices - 2 * 55 - 3  # 56 edges per side: opposite nodes merged
    dof_x = problem.doflocs[:, iw][:, problem.orig2dof]
    d = np.abs(np.mod(mesh.p - dof_x + 0.5, 1.0) - 0.5)
    assert d.max() < 1e-9
    # a periodic function interpolated on the periodic space has no seam
    f = np.sin(2 * np.pi * problem.doflocs[0, iw]) * np.cos(2 * np.pi * problem.doflocs[1, iw])
    g = np.sin(2 * np.pi * mesh.p[0]) * np.cos(2 * np.pi * mesh.p[1])
    np.testing.assert_allclose(f[problem.orig2dof], g, atol=1e-9)


def test_fast_operator_equals_the_problem_residual(problem):
    s = VorticitySolver(problem)
    omega = SPEC.sample_inputs(np.random.default_rng(5), 1, problem)[0]
    omega -= (s.ones_M @ omega) / s.ones_M.sum()
    u = s.assemble(omega)
    R = problem.residual(torch.tensor(u)).numpy()  # steady part: the spatial operator
    Mrhs = -(s.M @ s.rhs(omega))
    iw, ip = problem.basis.split_indices()
    np.testing.assert_allclose(R[iw], Mrhs, atol=1e-12 * np.abs(Mrhs).max())
    assert np.abs(R[ip]).max() < 1e-12  # psi rows hold exactly


def test_psi_has_zero_mean_and_omega_keeps_zero_mean(problem, trajectory):
    s = VorticitySolver(problem)
    times, U = trajectory
    iw, ip = problem.basis.split_indices()
    area = s.ones_M.sum()
    assert np.abs(U[:, iw] @ s.ones_M).max() / area < 1e-13
    assert np.abs(U[:, ip] @ s.ones_M).max() / area < 1e-8


def test_energy_and_enstrophy_do_not_grow(problem, trajectory):
    times, U = trajectory
    assert U.shape == (65, problem.n) and np.isclose(times[-1], 5.0)
    E, Z = energy_enstrophy(problem, U)
    assert np.all(np.diff(E) <= 1e-14 * E[0])
    assert np.all(np.diff(Z) <= 1e-14 * Z[0])
    assert E[-1] < E[0] and Z[-1] < 0.95 * Z[0]  # viscous decay is visible, not a frozen field


def test_inviscid_semi_discretisation_conserves_energy_and_enstrophy():
    # nu = 0: the Galerkin advection is skew-symmetric; only SSP-RK3's O(dt^4) damping remains
    problem = SPEC.build(nu=0.0, T=0.5, n_steps=4)
    omega0 = SPEC.sample_inputs(np.random.default_rng(2), 1, problem)[0]
    times, U = SPEC.reference(problem, omega0)
    E, Z = energy_enstrophy(problem, U)
    assert abs(E[-1] / E[0] - 1) < 1e-6 and abs(Z[-1] / Z[0] - 1) < 1e-5
    assert np.all(np.diff(Z) <= 0)


def test_reference_is_a_time_converged_solution_of_the_problem(problem):
    # the saved-level theta-scheme residual of the reference shrinks like dt^2 when the Problem
    # is stepped finely; here: the reference satisfies Crank-Nicolson steps at dt = T/n_steps/8
    p = SPEC.build(T=0.25, n_steps=2)
    omega0 = SPEC.sample_inputs(np.random.default_rng(4), 1, p)[0]
    s = VorticitySolver(p)
    _, U = s.run(omega0, substeps=8)
    _, V = s.run(omega0, substeps=16)
    assert np.linalg.norm(U[-1] - V[-1]) / np.linalg.norm(V[-1]) < 1e-6


def _load_spectral():
    spec = importlib.util.spec_from_file_location("ns_spectral", ROOT / "benchmarks" / "ns_spectral.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_spectral_solver_keeps_a_steady_eigenmode():
    # omega = cos(2 pi x) cos(2 pi y) is a steady Euler state that decays at rate nu (2 pi)^2 * 2
    mod = _load_spectral()
    N = 32
    g = np.arange(N) / N
    X, Y = np.meshgrid(g, g, indexing="ij")
    w0 = np.cos(2 * np.pi * X) * np.cos(2 * np.pi * Y)
    W = mod.spectral_solve(w0, 1e-3, 1.0, 2, 20)
    np.testing.assert_allclose(W[-1], w0 * np.exp(-1e-3 * 8 * np.pi**2), atol=1e-8)


@pytest.mark.slow
def test_fem_agrees_with_pseudo_spectral_256():
    mod = _load_spectral()
    r = mod.compare_with_fem(seed=0, N=256, substeps=16)
    print(json.dumps({k: v for k, v in r.items() if not isinstance(v, list)}, indent=1))
    assert r["rel_l2_final"] < 0.03
    assert r["rel_l2_space_time"] < 0.02


# ---------------------------------------------------------------- structured grid and lifted unknowns
def test_structured_grid_is_periodic():
    p = SPEC.build(grid=8, n_steps=2)
    iw, ip = p.basis.split_indices()
    assert iw.size == ip.size == 64  # 9 x 9 vertices, opposite sides identified
    f = np.sin(2 * np.pi * p.doflocs[0, iw]) * np.cos(2 * np.pi * p.doflocs[1, iw])
    g = np.sin(2 * np.pi * p.orig_mesh.p[0]) * np.cos(2 * np.pi * p.orig_mesh.p[1])
    np.testing.assert_allclose(f[p.orig2dof], g, atol=1e-12)


@pytest.mark.parametrize("lift", ["increment", "paper"])
def test_lifted_rows_are_the_rows_of_the_state(lift):
    """u = u0 + s(t) z: the lifted Problem's rows at z equal the plain Problem's rows at u, for
    any z(0) when s(0) = 0 ('paper': the initial state holds by construction)."""
    plain = SPEC.build(grid=6, n_steps=4, T=1.0)
    lifted = SPEC.build(grid=6, n_steps=4, T=1.0, lift=lift)
    rng = np.random.default_rng(1)
    u0 = torch.tensor(SPEC.initial_state(plain, SPEC.sample_inputs(rng, 2, plain)))
    times = np.linspace(0.0, 1.0, 5)
    s = torch.tensor(SPEC.lift_scale(lifted, times))
    z = torch.tensor(rng.standard_normal((2, 5, plain.n)))
    if lift == "increment":
        z[:, 0] = 0.0
    else:
        assert s[0] == 0.0
    U = SPEC.state_from_lifted(lifted, z, u0, times)
    torch.testing.assert_close(U[:, 0], u0, rtol=0, atol=0)  # exact initial state
    R_plain = plain.trajectory_residual(U[:, 1:], U[:, 0], 0.25)
    R_lift = lifted.trajectory_residual(z[:, 1:], z[:, 0], 0.25, {"initial_state": u0})
    torch.testing.assert_close(R_lift, R_plain, rtol=0, atol=1e-12 * float(R_plain.abs().max()))


def test_lifted_hard_constraint_keeps_the_initial_state_exactly():
    """PI-HC on the 'paper' lift: whatever the basis, level 0 of the state is u0 to the last bit,
    and the solve drives the rows of the state down."""
    from femoe.layers import HardConstraint
    from femoe.layers._state import INITIAL

    lifted = SPEC.build(grid=6, n_steps=2, T=0.5, lift="paper")
    rng = np.random.default_rng(2)
    u0 = torch.tensor(SPEC.initial_state(lifted, SPEC.sample_inputs(rng, 1, lifted)))
    B = torch.tensor(rng.standard_normal((1, 3, lifted.n, 8)))
    layer = HardConstraint(lifted, dt=0.25, tol=1e-10)
    z, info = layer(B, {"initial_state": u0}, torch.zeros_like(u0))
    U = SPEC.state_from_lifted(lifted, z, u0, [0.0, 0.25, 0.5])
    assert torch.equal(U[:, 0], u0)
    r0 = layer.model.residual(torch.zeros_like(z), {"initial_state": u0, INITIAL: torch.zeros_like(u0)})
    r = layer.model.residual(z.detach(), {"initial_state": u0, INITIAL: torch.zeros_like(u0)})
    assert float(r.norm()) < float(r0.norm())


def test_paper_lift_level_zero_of_the_basis_does_not_matter():
    """With u = u0 + (t/T) z the basis' level 0 enters no row: the Task's layer arguments make
    its initial-condition rows inert, so the constrained state does not depend on it, and the
    training loss has no initial-condition rows."""
    from femoe.layers import HardConstraint
    from femoe.train.config import config_from_dict
    from femoe.train.task import Task

    cfg = config_from_dict({"problem": {"name": "navier_stokes_2d",
                                        "params": {"grid": 6, "n_steps": 2, "T": 0.5, "lift": "paper"}},
                            "data": {"dir": "/nonexistent"}})
    task = Task(cfg, load_data=False)
    assert task.lifted and task.ic_by_construction
    rng = np.random.default_rng(3)
    omega0 = torch.tensor(SPEC.sample_inputs(rng, 1, task.problem))
    params, u0_layer = task.layer_args(omega0)
    layer = HardConstraint(task.problem, dt=0.25, tol=1e-12)
    B = torch.tensor(rng.standard_normal((1, 3, task.problem.n, 6)))
    B2 = B.clone()
    B2[:, 0] = torch.tensor(rng.standard_normal((task.problem.n, 6))) * 10
    z1, _ = layer(B, params, u0_layer)
    z2, _ = layer(B2, params, u0_layer)
    # inert to 1e-4 of the field (rows weighted 1e-6); with u0 = 0 as the layer rows the change is O(1)
    torch.testing.assert_close(z2[:, 1:], z1[:, 1:], rtol=0, atol=1e-4 * float(z1[:, 1:].abs().max()))
    task.dt = 0.25  # set by load() from the data's times
    r = task.residual(z1, params, u0_layer)
    assert r.shape == (1, 2 * task.problem.n)  # the rows of levels 1, 2 only
