"""Fields fixed by a linear algebraic equation, computed from the others (femoe.layers.AlgebraicFields;
``network.solve_algebraic``): Navier-Stokes' streamfunction from the vorticity.

The completed basis must satisfy the problem's own weak-form rows for the streamfunction (checked
through ``Problem.residual``, not through the map's matrices), leave the evolved field's
non-constant part unchanged, equal a dense solve, and be differentiable (gradcheck)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from femoe.errors import ConfigError, ShapeError
from femoe.layers import AlgebraicFields
from femoe.problems import get_problem


@pytest.fixture(scope="module")
def ns():
    spec = get_problem("navier_stokes_2d")
    problem = spec.build(grid=6, n_steps=2, T=0.5)  # the state itself: its psi rows are linear
    return spec, problem, spec.algebraic_fields(problem)


@pytest.mark.parametrize("shape", [(1, 3), (2, 3), (2, 4, 3)])
def test_every_member_satisfies_the_streamfunction_rows(ns, shape):
    spec, problem, af = ns
    iw, ip = problem.basis.split_indices()
    g = torch.Generator().manual_seed(1)
    *lead, N = shape
    B = torch.randn(*lead, problem.n, N, generator=g, dtype=torch.float64)
    C = af(B)
    w = torch.randn(N, generator=g, dtype=torch.float64)
    u = (C @ w).reshape(-1, problem.n)
    R = problem.residual(u, {})  # the weak form's rows: (K + alpha M) psi - M omega at ip
    scale = float(torch.as_tensor(af.C @ u[:, iw].T.numpy()).abs().max())
    assert float(R[:, ip].abs().max()) < 1e-10 * scale
    # the raw network basis does not satisfy them: the test would catch an identity map
    assert float(problem.residual((B @ w).reshape(-1, problem.n), {})[:, ip].abs().max()) > 1e-2 * scale
    np.testing.assert_allclose(af.residual(u), 0.0, atol=1e-10 * scale)


def test_vorticity_keeps_its_shape_and_loses_only_its_mean(ns):
    spec, problem, af = ns
    iw, ip = problem.basis.split_indices()
    B = torch.randn(2, problem.n, 4, dtype=torch.float64)
    C = af(B)
    d = (B - C)[:, iw, :]  # a constant per column
    torch.testing.assert_close(d, d[:, :1, :].expand_as(d), rtol=0, atol=1e-12)
    m = torch.as_tensor(af.solvability)
    assert float((m @ C[:, iw, :]).abs().max()) < 1e-12  # zero mean (M-weighted), as the scheme keeps it
    assert float((m @ C[:, ip, :]).abs().max()) < 1e-10  # so has psi
    torch.testing.assert_close(af(C), C, rtol=0, atol=1e-10)  # a completed basis is a fixed point


def test_equals_a_dense_solve(ns):
    spec, problem, af = ns
    iw, ip = problem.basis.split_indices()
    B = torch.randn(3, problem.n, 2, dtype=torch.float64)
    A, Cm = af.A.toarray(), af.C.toarray()
    m = af.solvability / af.solvability.sum()
    om = B[:, iw, :].numpy()
    om = om - np.einsum("i,bin->bn", m, om)[:, None, :]
    ps = np.linalg.solve(A, np.einsum("ij,bjn->bin", Cm, om))
    g = af.gauge / af.gauge.sum()
    ps = ps - np.einsum("i,bin->bn", g, ps)[:, None, :]  # the exact solution's gauge, round-off removed
    np.testing.assert_allclose(af(B)[:, ip, :].numpy(), ps, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(af(B)[:, iw, :].numpy(), om, rtol=0, atol=1e-13)


def test_gradcheck_and_finite_differences(ns):
    spec, problem, af = ns
    B = torch.randn(1, problem.n, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(af, (B,))
    # a scalar loss against central differences in one random direction
    v = torch.randn_like(B)
    loss = lambda b: (af(b) ** 2).sum()  # noqa: E731
    (gB,) = torch.autograd.grad(loss(B), B)
    h = 1e-6
    with torch.no_grad():
        fd = (loss(B + h * v) - loss(B - h * v)) / (2 * h)
    assert abs(float((gB * v).sum()) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_bad_input_is_refused(ns):
    spec, problem, af = ns
    with pytest.raises(ShapeError, match=r"expected a basis \(\.\.\., %d, N\)" % problem.n):
        af(torch.zeros(2, problem.n + 1, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="floating point"):
        af(torch.zeros(problem.n, 3, dtype=torch.int64))
    with pytest.raises(ShapeError, match="overlap"):
        AlgebraicFields(np.array([0, 1]), np.array([1, 2]), sp.eye(2), sp.eye(2), 4)
    with pytest.raises(ShapeError, match="must be 2 x 2"):
        AlgebraicFields(np.array([0, 1]), np.array([2, 3]), sp.eye(3), sp.eye(2), 4)
    with pytest.raises(ShapeError, match="solvability"):
        AlgebraicFields(np.array([0, 1]), np.array([2, 3]), sp.eye(2), sp.eye(2), 4, solvability=np.zeros(2))


def _psi_rows(grid: int):
    """``x -> max |psi row|`` of the unlifted Navier-Stokes problem on a ``grid`` x ``grid`` mesh
    (the lifted unknown obeys the state's psi rows, since u0 does)."""
    state = get_problem("navier_stokes_2d").build(grid=grid, n_steps=2, T=0.5)
    ip = state.basis.split_indices()[1]
    return lambda x: float(state.residual(x.reshape(-1, state.n), {})[:, ip].abs().max())


def test_config_option(tmp_path):
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    with pytest.raises(ConfigError, match="has no field fixed by an algebraic equation"):
        config_from_dict({"problem": {"name": "diffusion_sorption_1d"}, "network": {"solve_algebraic": True}})
    cfg = config_from_dict({
        "name": "alg", "methods": ["pihc"],
        "problem": {"name": "navier_stokes_2d", "params": {"grid": 4, "n_steps": 2, "T": 0.5, "lift": "paper"}},
        "data": {"n_train": 2, "n_test": 2, "dir": str(tmp_path / "d")},
        "network": {"kind": "gnn", "n_basis": 3, "width": 8, "depth": 2, "solve_algebraic": True},
    })
    task = Task(cfg)
    m = build_method("pihc", task)
    # the lifted unknown z obeys the state's psi rows (u0 does): check them on the unlifted problem
    psi_rows = _psi_rows(grid=4)

    B = m.network_output(task.test.inputs)
    assert psi_rows(B.movedim(-1, -2)) < 1e-10 * float(B.abs().max())
    m.task.algebraic = None  # the raw network: its psi rows are far from zero
    assert psi_rows(m.network_output(task.test.inputs).movedim(-1, -2)) > 1e-3
    m.task.algebraic = task.spec.algebraic_fields(task.problem)
    with torch.no_grad():
        z, info = m(task.test.inputs)
    assert info["unconverged"] == 0
    assert psi_rows(z) < 1e-9 * float(z.abs().max())


def test_two_level_experts_keep_the_algebraic_field(tmp_path):
    """Two-level experts mask the basis per DOF, which breaks psi's equation in the layer's
    output; the MoE method computes psi again from the output's omega, so it holds exactly."""
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    cfg = config_from_dict({
        "name": "alg2", "methods": ["moe"],
        "problem": {"name": "navier_stokes_2d", "params": {"grid": 8, "n_steps": 2, "T": 0.5, "lift": "paper"}},
        "data": {"n_train": 2, "n_test": 2, "dir": str(tmp_path / "d")},
        "network": {"kind": "gnn", "n_basis": 3, "width": 8, "depth": 2, "solve_algebraic": True},
        "experts": {"k": 4, "partition": "rcb", "coarse": True, "loss": "stitched"},
    })
    task = Task(cfg)
    m = build_method("moe", task)
    psi_rows = _psi_rows(grid=8)
    state = get_problem("navier_stokes_2d").build(grid=8, n_steps=2, T=0.5)

    with torch.no_grad():
        B = m.network_output(task.test.inputs)
        params, u0 = task.layer_args(task.test.inputs)
        raw, _ = m.layer(B, params, u0)
        z, info = m(task.test.inputs)
    assert psi_rows(raw) > 1e-6 * float(raw.abs().max())  # the layer alone breaks it
    assert psi_rows(z) < 1e-9 * float(z.abs().max())
    iw = state.basis.split_indices()[0]
    d = z[..., iw] - raw[..., iw]  # omega is the layer's, projected onto zero mean (the solvability condition)
    assert float((d - d[..., :1]).abs().max()) < 1e-12
