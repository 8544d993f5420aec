"""Krylov tendencies of the initial state added to a basis (``network.tendencies``; the problem
spec's ``tendencies``): Navier-Stokes' right-hand side at omega0 and its Jacobian-vector products,
placed one column per level and tendency."""

import numpy as np
import pytest
import torch

from femoe.errors import ConfigError
from femoe.problems import get_problem
from femoe.problems.navier_stokes_2d import VorticitySolver


@pytest.fixture(scope="module")
def ns():
    spec = get_problem("navier_stokes_2d")
    problem = spec.build(grid=6, n_steps=2, T=0.5, lift="paper")
    rng = np.random.default_rng(3)
    return spec, problem, spec.initial_state(problem, spec.sample_inputs(rng, 2, problem))  # (omega0, psi0)


@pytest.mark.parametrize("batch", [1, 2])
def test_tendencies_are_the_rhs_and_its_jacobian_products(ns, batch):
    spec, problem, states = ns
    s = VorticitySolver(problem)
    F = spec.tendencies(problem, states[:batch], 3)
    assert F.shape == (batch, 3, problem.n)
    for b in range(batch):
        om0 = states[b][s.iw]
        size = np.linalg.norm(om0)
        g = s.rhs(om0)
        for k in range(3):
            if k:  # the Jacobian-vector product by a small central difference (independent of e)
                h = 1e-6 * size / np.linalg.norm(g)
                g = (s.rhs(om0 + h * g) - s.rhs(om0 - h * g)) / (2 * h)
            g = g * size / np.linalg.norm(g)
            np.testing.assert_allclose(F[b, k, s.iw], g, rtol=1e-6, atol=1e-7 * size)
            np.testing.assert_allclose(F[b, k, s.ip], s.psi(F[b, k, s.iw]), rtol=1e-10, atol=1e-12)
    # the tendencies of one sample do not depend on the others in the batch
    np.testing.assert_allclose(spec.tendencies(problem, states[1:2], 3)[0], spec.tendencies(problem, states, 3)[1])


def test_first_tendency_is_the_time_derivative_of_the_reference(ns):
    spec, problem, states = ns
    fine = get_problem("navier_stokes_2d").build(grid=6, n_steps=1, T=1e-4)
    s = VorticitySolver(fine)
    _, U = spec.reference(fine, states[0][s.iw])
    d = (U[1] - U[0])[s.iw] / 1e-4
    f = spec.tendencies(problem, states[:1], 1)[0, 0, s.iw]
    cos = d @ f / (np.linalg.norm(d) * np.linalg.norm(f))
    assert cos > 1 - 1e-6


def test_columns_sit_at_their_level_and_the_config(tmp_path):
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    with pytest.raises(ConfigError, match="does not provide tendencies"):
        config_from_dict({"problem": {"name": "diffusion_sorption_1d"}, "network": {"tendencies": 2}})
    with pytest.raises(ConfigError, match="does not provide tendencies"):
        config_from_dict({"problem": {"name": "darcy_2d"}, "network": {"tendencies": 2}})
    cfg = config_from_dict({
        "name": "tend", "methods": ["pihc"],
        "problem": {"name": "navier_stokes_2d", "params": {"grid": 4, "n_steps": 3, "T": 0.5, "lift": "paper"}},
        "data": {"n_train": 2, "n_test": 2, "dir": str(tmp_path / "d")},
        "network": {"kind": "gnn", "n_basis": 3, "width": 8, "depth": 2, "tendencies": 2},
    })
    task = Task(cfg)
    inputs = task.test.inputs
    C = task.tendency_columns(inputs, 4)
    F = torch.as_tensor(task.spec.tendencies(task.problem, task.spec.initial_state(task.problem, inputs.double().numpy()), 2))
    assert C.shape == (2, 4, task.n, 6)
    for lev in range(4):
        for col in range(6):
            want = F[:, col % 2] if lev >= 1 and col // 2 == lev - 1 else torch.zeros_like(F[:, 0])
            torch.testing.assert_close(C[:, lev, :, col], want, rtol=0, atol=0)
    m = build_method("pihc", task)
    B = m.network_output(inputs)
    assert B.shape[-1] == 3 + 6
    torch.testing.assert_close(B[..., 3:], C)
    with torch.no_grad():
        z, info = m(inputs)
    assert info["unconverged"] == 0
    assert build_method("soft", task).network_output(inputs).shape[-1] == 1  # soft: one field, no tendencies


def test_passes_retake_the_tendencies_at_the_solution(tmp_path):
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    with pytest.raises(ConfigError, match="tendency_passes = 2 re-takes"):
        config_from_dict({"problem": {"name": "navier_stokes_2d"}, "network": {"tendency_passes": 2}})

    def task_with(passes):
        return Task(config_from_dict({
            "name": "passes", "methods": ["pihc"],
            "problem": {"name": "navier_stokes_2d", "params": {"grid": 4, "n_steps": 3, "T": 0.5, "lift": "paper"}},
            "data": {"n_train": 2, "n_test": 2, "dir": str(tmp_path / "d")},
            "network": {"kind": "gnn", "n_basis": 3, "width": 8, "depth": 2, "tendencies": 2,
                        "solve_algebraic": True, "tendency_passes": passes}}))

    one, two = task_with(1), task_with(2)
    torch.manual_seed(0)
    m1 = build_method("pihc", one)
    m2 = build_method("pihc", two)
    m2.load_state_dict(m1.state_dict())
    inputs = one.test.inputs
    with torch.no_grad():
        z1, _ = m1(inputs)
        B2, z2, info, its = m2.basis(inputs)
    params, u0 = two.layer_args(inputs)
    # the second pass: the network's columns, then each level's tendencies at the first solution's
    # previous level (the state u0 + s(t) z1), nothing else
    states = two.spec.state_from_lifted(two.problem, z1, params["initial_state"], two.times)
    want = torch.cat([two.algebraic(m2._network_output(inputs)),
                      two.algebraic(two.tendency_columns(inputs, 4, states[:, :-1]))], -1)
    torch.testing.assert_close(B2, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(B2, m1.network_output(inputs))  # level 2's columns moved off u0's
    torch.testing.assert_close(B2[:, 1, :, 3:5], m1.network_output(inputs)[:, 1, :, 3:5])  # level 1 starts at u0
    with torch.no_grad():
        z_direct, _ = m2.layer(B2, params, u0)
    torch.testing.assert_close(z2, z_direct)
    # training: the loss's gradient reaches the network through the last solve
    m2.train()
    z, _ = m2(inputs)
    loss = two.residual(z, params, u0).square().mean()
    loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in m2.net.parameters() if p.grad is not None])
    assert torch.isfinite(g).all() and float(g.abs().max()) > 0


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("lift", ["none", "paper", "increment"])
def test_state_columns_hold_each_levels_previous_state(tmp_path, lift, batch):
    """``network.state_columns``: from the second pass on, level l also gets the previous pass's
    state at level l - 1 as a column of its own. In the unknown (lifted or not), the member with
    weight 1 on it alone is exactly that state (the persistent field), at level l and nowhere else."""
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    with pytest.raises(ConfigError, match="needs network.tendency_passes > 1"):
        config_from_dict({"problem": {"name": "navier_stokes_2d"},
                          "network": {"tendencies": 2, "state_columns": True}})
    task = Task(config_from_dict({
        "name": "state", "methods": ["pihc"],
        "problem": {"name": "navier_stokes_2d", "params": {"grid": 4, "n_steps": 3, "T": 0.5, "lift": lift}},
        "data": {"n_train": 2, "n_test": 2, "dir": str(tmp_path / "d")},
        "network": {"kind": "gnn", "n_basis": 3, "width": 8, "depth": 2, "tendencies": 2,
                    "solve_algebraic": True, "tendency_passes": 2, "state_columns": True}}))
    inputs = task.test.inputs[:batch]
    params, u0 = task.layer_args(inputs)
    u_init = params["initial_state"] if task.lifted else u0
    assert task.lifted == (lift != "none")

    def state(z, u_init, times):  # the state of the unknown z
        return task.spec.state_from_lifted(task.problem, z, u_init, times) if task.lifted else z

    states = u_init[:, None] + 0.1 * torch.randn(batch, 3, task.n, dtype=torch.float64,
                                                 generator=torch.Generator().manual_seed(0))
    C = task.state_columns(states, u_init)
    assert C.shape == (batch, 4, task.n, 3)
    for lev in range(4):
        for col in range(3):
            if lev == col + 1:
                u = state(C[:, lev:lev + 1, :, col], u_init, task.times[lev:lev + 1])[:, 0]
                torch.testing.assert_close(u, states[:, col], rtol=1e-12, atol=1e-12)
            else:
                assert not C[:, lev, :, col].any()
    m = build_method("pihc", task)
    with torch.no_grad():
        B, z, info, _ = m.basis(inputs)
    assert B.shape[-1] == 3 + 3 * 2 + 3 and info.all_converged
    s = state(z, u_init, task.times)
    first = state(m.layer(m.network_output(inputs), params, u0)[0], u_init, task.times)
    torch.testing.assert_close(B[..., -3:], task.algebraic(task.state_columns(first[:, :-1], u_init)),
                               rtol=1e-10, atol=1e-12)
    assert torch.isfinite(s).all()
