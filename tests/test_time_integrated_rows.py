"""Time-integrated trajectory rows (``solver.time_integrated_rows``, issue 14).

:class:`femoe.layers.TimeIntegratedRows` replaces each level's rows by ``dt`` times their sum
over the levels up to it. Every path of :class:`TrajectoryResidual` (the residual, both Jacobian
paths, the stacked operator of the basis adjoint, the Hessian through the residual) must apply
the same map, on a scalar and on the mixed (omega, psi) space, at batch 1 and 2, with row
subsets; the mixture of experts and the training loss must use the rows the layers use.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from femoe.errors import ConfigError, ProblemError, ShapeError
from femoe.layers import HardConstraint, TimeIntegratedRows
from femoe.layers._residuals import INITIAL, TrajectoryResidual, basis_field
from tests.test_layers_fast_paths import (CASES, _case, assert_fast_backward_equals_reference, navier_stokes,
                                         ns_params)

F64 = torch.float64
DT = 0.1


def _models(pb, kw, weights=None):
    s = np.asarray(pb.row_scale(), dtype=float) if weights is None else weights
    args = dict(rows=kw.get("rows"), dofs=kw.get("dofs"), ic_rows=kw.get("ic_rows"))
    return (TrajectoryResidual(pb, DT, row_scale=s, **args),
            TrajectoryResidual(pb, DT, row_scale=TimeIntegratedRows(s), **args))


def _level_rows(kw, pb, L):
    """Rows of the flattened steps that are the same DOFs at every level (an expert's shape)."""
    if not kw:
        return kw
    dofs = np.arange(1, pb.n - 1, 2)
    return {**kw, "rows": torch.as_tensor(np.concatenate([t * pb.n + dofs for t in range(L - 1)]))}


@pytest.mark.parametrize("name,batch,subset", CASES)
def test_rows_are_the_step_rows_summed_over_the_levels(name, batch, subset):
    pb, kw, B, params, u0 = _case(name, batch, subset)
    L = B.shape[1]
    kw = _level_rows(kw, pb, L)
    plain, integ = _models(pb, kw)
    p = {**params, INITIAL: u0}
    u = basis_field(B, torch.randn(batch, B.shape[-1], dtype=F64, generator=torch.Generator().manual_seed(2)))
    r0, r1 = plain.residual(u, p), integ.residual(u, p)
    m = r0.shape[1] - (pb.n if kw.get("ic_rows") is None else kw["ic_rows"].numel())
    steps = r0[:, :m].reshape(batch, L - 1, -1)
    expect = DT * torch.stack([steps[:, : t + 1].sum(1) for t in range(L - 1)], dim=1).reshape(batch, m)
    torch.testing.assert_close(r1[:, :m], expect, rtol=1e-14, atol=1e-14 * float(expect.abs().max()))
    torch.testing.assert_close(r1[:, m:], r0[:, m:], rtol=0, atol=0)  # initial rows unchanged
    assert not torch.allclose(r1[:, :m], r0[:, :m])


@pytest.mark.parametrize("name,batch,subset", CASES)
def test_both_jacobian_paths_equal_the_dense_jacobian(name, batch, subset):
    pb, kw, B, params, u0 = _case(name, batch, subset)
    _, model = _models(pb, _level_rows(kw, pb, B.shape[1]))
    p = {**params, INITIAL: u0}
    w = torch.randn(batch, B.shape[-1], dtype=F64, generator=torch.Generator().manual_seed(1))
    u = basis_field(B, w)
    r_fast, J_fast = model.linearize(u, B, p)  # the stacked sparse product, then the sum
    with torch.enable_grad():
        r_ref, J_ref = model.linearize(u, B.clone().requires_grad_(True), p)
    torch.testing.assert_close(r_fast, r_ref.detach(), rtol=0, atol=0)
    torch.testing.assert_close(J_fast, J_ref.detach(), rtol=1e-13, atol=1e-13 * float(J_ref.detach().abs().max()))
    J_dense = torch.stack([torch.autograd.functional.jacobian(
        lambda ww: model.residual(basis_field(B[b:b + 1], ww.unsqueeze(0)), {k: v[b:b + 1] for k, v in p.items()})[0],
        w[b]) for b in range(batch)])
    torch.testing.assert_close(J_fast, J_dense, rtol=1e-10, atol=1e-10 * float(J_dense.abs().max()))


@pytest.mark.parametrize("name,batch", [("heat", 1), ("heat", 2), ("ns", 2)])
def test_basis_adjoint_backward_equals_the_double_backward(name, batch, monkeypatch):
    pb, _, B, params, u0 = _case(name, batch, False)
    layer = HardConstraint(pb, dt=DT, tol=1e-13, row_scale=TimeIntegratedRows(pb.row_scale()))
    assert_fast_backward_equals_reference(layer, B, params, u0, TrajectoryResidual, monkeypatch)


def test_gradcheck_of_the_layer_with_integrated_rows():
    pb, _, B, params, u0 = _case("heat", 2, False)
    layer = HardConstraint(pb, dt=DT, tol=1e-14, row_scale=TimeIntegratedRows(pb.row_scale()))
    u0 = u0.clone().requires_grad_(True)

    def fn(B, u0):
        u, info = layer(B, params, u0)
        assert info.all_converged
        return u

    assert torch.autograd.gradcheck(fn, (B.clone().requires_grad_(True), u0), fast_mode=True)


def test_the_scheme_solution_is_the_same_zero_and_other_members_are_picked_differently(make_heat):
    """The map is invertible, so a basis holding the scheme's solution gives it back under both
    rows; a basis that cannot reach it gives a different member. (A linear problem: with a
    nonlinear one the least squares on a random basis has other local minima.)"""
    from femoe.helpers import dot, grad

    pb = make_heat(lambda u, v, w: w.D * dot(grad(u), grad(v)) - v, 3, theta=0.5, dirichlet={"left": 0.0}, D=0.2)
    params, B = {}, 0.3 * torch.randn(2, 3, pb.n, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    u0 = (1.0 + torch.as_tensor(pb.doflocs[0])).unsqueeze(0).expand(2, -1).contiguous()
    plain = HardConstraint(pb, dt=DT, tol=1e-13, rho=0.0, row_scale=pb.row_scale())
    integ = HardConstraint(pb, dt=DT, tol=1e-13, rho=0.0, row_scale=TimeIntegratedRows(pb.row_scale()))
    # the scheme's solution from the plain layer with a full basis (identity on every level)
    L, n = B.shape[1], pb.n
    eye = torch.eye(L * n, dtype=F64).reshape(L, n, L * n).unsqueeze(0).expand(2, -1, -1, -1)
    u_star, info = plain(eye, params, u0)
    assert info.all_converged
    B_hold = torch.cat([B, u_star.unsqueeze(-1)], dim=-1)
    for layer in (plain, integ):
        u, info = layer(B_hold, params, u0)
        assert info.all_converged
        torch.testing.assert_close(u, u_star, rtol=0, atol=1e-8)
    a, b = plain(B, params, u0)[0], integ(B, params, u0)[0]
    assert float((a - b).abs().max()) > 1e-4


def test_experts_use_the_same_rows():
    """One expert holding every DOF enforces exactly PI-HC's rows: the same field."""
    from femoe.experts import HardConstraintMoE

    pb = navier_stokes(grid=4)
    params = ns_params(pb, 2)
    u0 = torch.zeros(2, pb.n, dtype=F64)
    B = 0.3 * torch.randn(2, 3, pb.n, 5, dtype=F64, generator=torch.Generator().manual_seed(7))
    # weights that differ by DOF (the periodic mesh's 1 / M_ii are all equal), so that a
    # mis-gathered copy in the experts would change them
    rows = TimeIntegratedRows(np.asarray(pb.row_scale()) * np.linspace(0.5, 1.5, pb.n))
    u_pihc, _ = HardConstraint(pb, dt=DT, tol=1e-13, row_scale=rows)(B, params, u0)
    u_plain, _ = HardConstraint(pb, dt=DT, tol=1e-13, row_scale=pb.row_scale())(B, params, u0)
    moe = HardConstraintMoE(pb, 1, partition="slab", dt=DT, tol=1e-13, row_scale=rows)
    u_moe, info = moe(B, params, u0)
    assert info.all_converged
    torch.testing.assert_close(u_moe, u_pihc, rtol=0, atol=1e-9)
    assert float((u_pihc - u_plain).abs().max()) > 1e-6
    # four experts: each union model sums its rows over the levels, with the parent's weights of
    # its union DOFs (TimeIntegratedRows.for_experts)
    moe4 = HardConstraintMoE(pb, 4, partition="metis", dt=DT, tol=1e-13, row_scale=rows)
    for g in moe4.groups:
        assert g.model.integrate
        torch.testing.assert_close(g.model.scale, torch.as_tensor(rows.s)[g.union_to_global], rtol=0, atol=0)
    u4, info4 = moe4(B, params, u0)
    assert info4.all_converged and torch.isfinite(u4).all()


def test_rows_that_differ_by_level_and_steady_problems_are_refused(make_square):
    pb, kw, B, params, u0 = _case("heat", 1, True)  # every other row of the flattened steps
    model = TrajectoryResidual(pb, DT, rows=kw["rows"], dofs=kw["dofs"], row_scale=TimeIntegratedRows(pb.row_scale()))
    with pytest.raises(ProblemError, match="same DOFs at every level"):
        model.residual(basis_field(B, torch.ones(1, B.shape[-1], dtype=F64)), {**params, INITIAL: u0})
    with pytest.raises(ProblemError, match="trajectories"):
        HardConstraint(make_square("poisson"), row_scale=TimeIntegratedRows(np.ones(make_square("poisson").n)))
    with pytest.raises(ShapeError, match="weights"):
        TrajectoryResidual(pb, DT, row_scale=TimeIntegratedRows(np.ones(pb.n + 1)))


def test_training_loss_uses_the_layers_rows(tmp_path):
    from femoe.train.methods import build_method
    from femoe.train.task import Task
    from tests.test_train import tiny

    cfg = tiny(tmp_path, methods=("pihc",))
    cfg.solver.time_integrated_rows = True
    task = Task(cfg)
    m = build_method("pihc", task)
    assert isinstance(m.layer.model.scale, torch.Tensor) and m.layer.model.integrate
    inp = task.test.inputs
    with torch.no_grad():
        u, _ = m(inp)
    p, u0 = task.layer_args(inp)
    loss_rows = task.residual(u, p, u0)
    layer_rows = m.layer.model.residual(u, {**p, INITIAL: u0})
    n_pde = (u.shape[1] - 1) * task.n  # the loss's initial rows are unweighted, the layer's weighted
    assert loss_rows.shape == layer_rows.shape
    torch.testing.assert_close(loss_rows[:, :n_pde], layer_rows[:, :n_pde], rtol=1e-12, atol=1e-12)
    steady = tiny(tmp_path, methods=("pihc",))
    steady.problem.name, steady.problem.params = "poisson_mms", {}
    steady.solver.time_integrated_rows = True
    with pytest.raises(ConfigError, match="steady"):
        Task(steady, load_data=False)


@pytest.mark.parametrize("name,batch", [("heat", 2), ("ns", 1)])
def test_experts_basis_adjoint_backward_equals_the_double_backward(name, batch, monkeypatch):
    from femoe.experts import HardConstraintMoE
    from femoe.experts._basis import _FoldedModel

    if name == "heat":
        pb, _, B, params, u0 = _case("heat", batch, False)
        k, part = 2, "slab"
    else:  # a mesh on which 4 experts have rows of their own
        pb = navier_stokes(grid=8)
        params, u0 = ns_params(pb, batch), torch.zeros(batch, pb.n, dtype=F64)
        B = 0.3 * torch.randn(batch, 3, pb.n, 4, dtype=F64, generator=torch.Generator().manual_seed(7))
        k, part = 4, "metis"
    layer = HardConstraintMoE(pb, k, partition=part, dt=DT, tol=1e-13, row_scale=TimeIntegratedRows(pb.row_scale()))
    assert_fast_backward_equals_reference(layer, B, params, u0, _FoldedModel, monkeypatch)
