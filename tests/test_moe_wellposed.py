"""PI-HC-MoE experts are well posed: every expert enforces the global boundary (and initial) rows.

A basis that contains the exact discrete solution of the rows gives it back for every number
of experts. A second column that satisfies every PDE row but other boundary (or initial) data
makes the experts that see only their own rows (``global_rows="none"``) underdetermined: they
return a mixture of the two, which these tests show, so they would fail if the global rows
were dropped.
"""

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.errors import ConfigError
from femoe.experts import HardConstraintMoE
from femoe.experts._basis import boundary_rows
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.problem import Problem
from femoe.reference import solve, solve_transient

F64 = torch.float64
DT, STEPS = 0.05, 5


@pytest.fixture
def steady_problem(make_square):
    """-div grad u = 1; u = g on "left", 0 on "right", Robin u v on "top" (facet rows)."""
    return make_square("unit_load", 3, facets={"top": lambda u, v, w: u * v}, dirichlet={"left": "g", "right": 0.0})


@pytest.fixture
def heat_problem(make_heat):
    """u_t = 0.05 u_xx, Crank-Nicolson; u = g on "left", outflow Robin u v on "right"."""
    return make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)), 5, facets={"right": lambda u, v, w: u * v},
                     theta=0.5, dirichlet={"left": "g"})


@pytest.fixture
def ds_problem(make_diffusion_sorption):
    """``ds_problem(u_left=1.0)``: diffusion-sorption (nonlinear storage, Dirichlet inflow, Robin
    outflow) on 24 cells."""
    return lambda u_left=1.0: make_diffusion_sorption(n_cells=24, n_saved=3, u_left=u_left)


def _g(value):
    return {"g": torch.tensor(value, dtype=F64)}


def steady_case(problem):
    exact = solve(problem, _g(1.0))[0]
    other = solve(problem, _g(3.0))[0]  # every PDE row holds, the Dirichlet rows on "left" do not
    g = torch.Generator().manual_seed(0)
    B = torch.cat([torch.tensor(np.stack([exact, other], 1)), torch.randn(problem.n, 3, dtype=F64, generator=g)], 1)
    return problem, B[None], dict(params=_g(1.0)), torch.tensor(exact)[None], "rcb"


def transient_case(which, heat_problem, ds_problem):
    if which == "heat":
        problem = alt = heat_problem
        params_alt = _g(2.5)
        x = problem.doflocs[0]
        u0 = 0.3 + 0.2 * np.sin(3 * x)
        dt, params = DT, _g(1.0)
    else:
        problem, alt = ds_problem(), ds_problem(u_left=0.5)
        params, params_alt = {}, {}
        u0 = np.full(problem.n, 0.1)
        dt = 5.0
    exact = solve_transient(problem, u0, dt, STEPS, params)[1]
    other = solve_transient(alt, u0, dt, STEPS, params_alt)[1]  # other inflow data
    g = torch.Generator().manual_seed(1)
    cols = [torch.tensor(exact), torch.tensor(other), torch.randn(STEPS + 1, problem.n, 2, dtype=F64, generator=g)]
    B = torch.cat([cols[0][..., None], cols[1][..., None], cols[2]], -1)
    kw = dict(params=params, u0=torch.tensor(u0)[None])
    return problem, B[None], kw, torch.tensor(exact)[None], "slab", dt


def _solve(problem, B, kw, K, part, dt=None, **opts):
    layer = HardConstraintMoE(problem, K, partition=part, rho=0.0, dt=dt, **opts)
    u, info = layer(B, kw["params"], kw.get("u0"))
    return u, info, layer


@pytest.mark.parametrize("K", [1, 2, 4])
def test_steady_exact_solution_recovered_for_every_K(K, steady_problem):
    problem, B, kw, exact, part = steady_case(steady_problem)
    u, info, _ = _solve(problem, B, kw, K, part)
    assert info.all_converged
    torch.testing.assert_close(u, exact, rtol=0, atol=1e-8)
    assert float(info.interface_jump.max()) < 1e-8


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("which", ["heat", "ds"])
def test_time_dependent_exact_solution_recovered_for_every_K(which, K, heat_problem, ds_problem):
    problem, B, kw, exact, part, dt = transient_case(which, heat_problem, ds_problem)
    u, info, _ = _solve(problem, B, kw, K, part, dt)
    assert info.all_converged
    torch.testing.assert_close(u, exact, rtol=0, atol=1e-8)


def test_steady_own_rows_only_are_underdetermined(steady_problem):
    problem, B, kw, exact, part = steady_case(steady_problem)
    u, _, layer = _solve(problem, B, kw, 4, part, global_rows="none")
    # experts that own no DOF of "left" cannot tell the two columns apart
    left = problem.basis.get_dofs(problem.mesh.boundaries["left"]).all()
    blind = [k for k in range(4) if not np.isin(left, np.nonzero(layer.partition.owner == k)[0]).any()]
    assert blind
    err = (u - exact).abs()[0]
    for k in blind:
        assert float(err[layer.partition.owner == k].max()) > 1e-2


def test_time_dependent_own_rows_only_are_underdetermined(heat_problem, ds_problem):
    # linear rows: every mixture of the two columns satisfies an interior expert's own rows
    problem, B, kw, exact, part, dt = transient_case("heat", heat_problem, ds_problem)
    u, _, _ = _solve(problem, B, kw, 4, part, dt, global_rows="none", maxiter=300)
    assert float((u - exact).abs().max()) > 1e-2


def test_global_initial_rows_determine_the_initial_level(heat_problem):
    """A column that satisfies every PDE and boundary row but another initial condition, equal to
    the true one except in the last expert's slab, fools every other expert without global
    initial rows."""
    problem = heat_problem
    x = problem.doflocs[0]
    u0 = 0.3 + 0.2 * np.sin(3 * x)
    u0_alt = u0 + np.where(x > 0.8, 0.5 * np.sin(np.pi * (x - 0.8) / 0.2) ** 2, 0.0)
    exact = solve_transient(problem, u0, DT, STEPS, _g(1.0))[1]
    other = solve_transient(problem, u0_alt, DT, STEPS, _g(1.0))[1]
    g = torch.Generator().manual_seed(2)
    B = torch.cat([torch.tensor(np.stack([exact, other], -1)), torch.randn(STEPS + 1, problem.n, 2, dtype=F64,
                                                                           generator=g)], -1)[None]
    kw = dict(params=_g(1.0), u0=torch.tensor(u0)[None])
    ref = torch.tensor(exact)[None]
    u, info, _ = _solve(problem, B, kw, 4, "slab", DT)
    torch.testing.assert_close(u, ref, rtol=0, atol=1e-8)
    u, _, _ = _solve(problem, B, kw, 4, "slab", DT, global_rows="boundary")
    assert float((u - ref).abs().max()) > 1e-2


def test_boundary_rows_cover_dirichlet_and_facet_dofs(steady_problem):
    problem = steady_problem
    rows = boundary_rows(problem)
    top = problem.basis.get_dofs(problem.mesh.boundaries["top"]).all()
    assert set(problem.dirichlet_dofs) <= set(rows) and set(top) <= set(rows)
    assert set(rows) == set(problem.dirichlet_dofs) | set(top)


@pytest.mark.parametrize("global_rows", ["none", "boundary", "initial", "boundary+initial"])
def test_one_expert_equals_pihc_for_every_option(global_rows, heat_problem):
    problem = heat_problem
    g = torch.Generator().manual_seed(3)
    B = torch.randn(2, 4, problem.n, 4, dtype=F64, generator=g)
    u0 = torch.rand(2, problem.n, dtype=F64, generator=g)
    u1, _ = HardConstraint(problem, dt=DT)(B, _g(1.0), u0)
    u2, _ = HardConstraintMoE(problem, 1, dt=DT, global_rows=global_rows)(B, _g(1.0), u0)
    torch.testing.assert_close(u2, u1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", ["all", "boundary+nothing", "", 3, 1.5])
def test_global_rows_option_is_validated(bad, steady_problem):
    with pytest.raises(ConfigError, match="global_rows"):
        HardConstraintMoE(steady_problem, 2, global_rows=bad)


GRADCHECK = [pytest.param(1, True), pytest.param(2, True),
             pytest.param(1, False, marks=pytest.mark.slow), pytest.param(2, False, marks=pytest.mark.slow)]


@pytest.mark.parametrize("batch, fast", GRADCHECK)
def test_gradcheck_with_global_rows_time_dependent(batch, fast, make_diffusion_sorption):
    """Nonlinear storage, Dirichlet and Robin rows, global initial rows, 3 experts."""
    problem = make_diffusion_sorption(n_cells=6, n_saved=3)
    layer = HardConstraintMoE(problem, 3, partition="slab", dt=5.0)
    g = torch.Generator().manual_seed(3)
    # a field that stays positive: the sorption term max(u, 0)^n_f has a kink at u = 0
    B = (0.5 + 0.1 * torch.randn(2, 3, problem.n, 3, dtype=F64, generator=g))[:batch].requires_grad_(True)
    u0 = (0.05 + 0.1 * torch.rand(2, problem.n, dtype=F64, generator=g))[:batch].requires_grad_(True)
    u, info = layer(B, u0=u0)
    assert info.all_converged and float(u.detach().min()) > 0.01
    assert torch.autograd.gradcheck(lambda B, u0: layer(B, u0=u0)[0], (B, u0), atol=1e-6, fast_mode=fast)


@pytest.mark.parametrize("batch, fast", GRADCHECK)
def test_gradcheck_with_global_rows_steady(batch, fast):
    """Nonlinear diffusion with Dirichlet and Robin rows on 3 experts, gradients to B and g."""
    mesh = fe.MeshTri().refined(2).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - v,
                      facets={"top": lambda u, v, w: u * v}, dirichlet={"left": "g", "right": 0.0})
    layer = HardConstraintMoE(problem, 3, partition="rcb")
    g = torch.Generator().manual_seed(5)
    B = torch.randn(batch, problem.n, 3, dtype=F64, generator=g, requires_grad=True)
    gv = torch.full((batch,), 0.7, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda B, gv: layer(B, {"g": gv})[0], (B, gv), atol=1e-6, fast_mode=fast)


def test_gradcheck_on_an_unstructured_mesh_with_metis_experts():
    """Issue 15: gradcheck of the MoE on a small unstructured mesh (jittered interior nodes of
    an L-shape, METIS experts, Dirichlet + Robin rows, nonlinear)."""
    pytest.importorskip("pymetis")
    mesh = fe.MeshTri.init_lshaped().refined(2)
    rng = np.random.default_rng(0)
    p = mesh.p.copy()
    interior = np.setdiff1d(np.arange(mesh.nvertices), mesh.boundary_nodes())
    p[:, interior] += 0.06 * rng.uniform(-1, 1, (2, interior.size))
    mesh = fe.MeshTri(p, mesh.t).with_boundaries({"west": lambda x: x[0] < -1 + 1e-9,
                                                 "north": lambda x: x[1] > 1 - 1e-9})
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - v,
                      facets={"north": lambda u, v, w: u * v}, dirichlet={"west": 0.0})
    layer = HardConstraintMoE(problem, 3, partition="metis")
    g = torch.Generator().manual_seed(7)
    B = torch.randn(2, problem.n, 3, dtype=F64, generator=g, requires_grad=True)
    u, info = layer(B)
    assert info.all_converged and info.interface_jump.max() > 0  # experts really differ
    assert torch.autograd.gradcheck(lambda B: layer(B)[0], (B,), atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("overlap", [1, 2])
@pytest.mark.parametrize("K", [2, 4])
def test_overlapping_experts_enforce_their_neighbours_rows_and_keep_an_exact_solution(steady_problem, K, overlap):
    from femoe.experts._basis import grow

    problem, B, kw, exact, part = steady_case(steady_problem)
    layer = HardConstraintMoE(problem, K, partition="rcb", rho=1e-14, tol=1e-14, overlap=overlap)
    g = layer.groups[0]
    A = problem.pattern
    for own, rows in zip(g.owned_global, g.rows_global):
        ring = own
        for _ in range(overlap):  # neighbours: DOFs sharing a row of the Jacobian's pattern
            ring = np.union1d(ring, np.concatenate([A.indices[A.indptr[i]:A.indptr[i + 1]] for i in ring]))
        assert set(ring) <= set(rows.tolist())
        assert set(grow(problem, own, overlap).tolist()) == set(ring.tolist())
    u, info = layer(B, **kw)
    assert info.all_converged
    torch.testing.assert_close(u, exact, atol=1e-9, rtol=0)


def test_overlap_must_be_a_whole_number_of_rings(steady_problem):
    with pytest.raises(ConfigError, match="overlap"):
        HardConstraintMoE(steady_problem, 2, partition="rcb", overlap=-1)


def test_the_moe_method_takes_the_overlap_from_the_config(tmp_path):
    from pathlib import Path

    from femoe.train.config import load_config
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    cfg = load_config(Path(__file__).resolve().parent / "configs" / "smoke_darcy_2d.toml")
    cfg.data.dir = str(tmp_path / "data")
    cfg.experts.overlap = 2
    layer = build_method("moe", Task(cfg)).layer
    assert layer.overlap == 2 and all(g.rows_global[0].size > g.owned_global[0].size for g in layer.groups)
