"""The trajectory model's fast paths against the differentiable reference paths (issue 11).

Without gradients :meth:`TrajectoryResidual.linearize` builds ``J_w`` as one sparse product of
the stacked (level-bidiagonal) Jacobian with ``B``, and when only ``B`` needs a gradient the
implicit backward takes ``(dG/dB)^T v`` from :meth:`TrajectoryResidual.basis_adjoint` instead of
autograd's double backward through the assembly. Both must equal the paths they replace, on a
scalar problem and on the mixed (omega, psi) space, with row and DOF subsets, at batch 1 and 2.
"""

from __future__ import annotations

import pytest
import skfem as fe
import torch

from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.layers._residuals import INITIAL, SteadyResidual, TrajectoryResidual, basis_field
from femoe.problem import Problem

F64 = torch.float64


def heat():
    mesh = fe.MeshLine().refined(3).with_boundaries({"left": lambda x: x[0] == 0, "right": lambda x: x[0] == 1})
    basis = fe.Basis(mesh, fe.ElementLineP1())
    # nonlinear storage and diffusion: the Hessian term H_r of the backward is non-zero
    return Problem(basis, lambda u, v, w: dot((w.D + u**2) * grad(u), grad(v)) - v,
                   storage=lambda u, v, w: (u + 0.3 * u**3) * v, theta=0.5, dirichlet={"left": 0.0},
                   defaults={"D": 0.2})


def navier_stokes(grid=3):
    from femoe.problems import get_problem

    return get_problem("navier_stokes_2d").build(grid=grid, n_steps=2, T=0.5, lift="paper")


def ns_params(pb, batch):
    """A smooth initial state (omega, psi) of the lifted problem, as its parameter."""
    iw, ip = pb.basis.split_indices()
    x = torch.as_tensor(pb.doflocs)
    state = torch.zeros(batch, pb.n, dtype=F64)
    state[:, iw] = torch.sin(2 * torch.pi * x[0, iw]) * torch.cos(2 * torch.pi * x[1, iw])
    state[:, ip] = state[:, iw] / (8 * torch.pi**2)
    return {"initial_state": state}


def _case(name, batch, subset):
    g = torch.Generator().manual_seed(batch + 10 * subset)
    if name == "heat":
        pb = heat()
        u0 = (1.0 + torch.as_tensor(pb.doflocs[0])).unsqueeze(0).expand(batch, -1).contiguous()
        params, L, N = {}, 3, 3
    else:
        pb = navier_stokes()
        params = ns_params(pb, batch)
        u0 = torch.zeros(batch, pb.n, dtype=F64)
        L, N = 3, 4
    kw = {}
    if subset:
        kw["rows"] = torch.arange(1, (L - 1) * pb.n, 2)  # every other row of the flattened steps
        kw["dofs"] = torch.arange(pb.n - 1)  # the basis vanishes on the last DOF
        kw["ic_rows"] = torch.arange(0, pb.n - 1, 3)
    n_l = pb.n - 1 if subset else pb.n
    B = 0.3 * torch.randn(batch, L, n_l, N, dtype=F64, generator=g)
    return pb, kw, B, params, u0


CASES = [(name, batch, subset) for name in ("heat", "ns") for batch in (1, 2) for subset in (False, True)]


@pytest.mark.parametrize("name,batch,subset", CASES)
def test_stacked_jacobian_equals_the_level_by_level_products(name, batch, subset):
    pb, kw, B, params, u0 = _case(name, batch, subset)
    model = TrajectoryResidual(pb, 0.1, rows=kw.get("rows"), dofs=kw.get("dofs"), ic_rows=kw.get("ic_rows"))
    p = {**params, INITIAL: u0}
    w = torch.randn(batch, B.shape[-1], dtype=F64, generator=torch.Generator().manual_seed(1))
    u = basis_field(B, w)
    r_fast, J_fast = model.linearize(u, B, p)  # no gradient: the stacked sparse product
    with torch.enable_grad():
        r_ref, J_ref = model.linearize(u, B.clone().requires_grad_(True), p)  # per-level jac_times
    torch.testing.assert_close(r_fast, r_ref.detach(), rtol=0, atol=0)
    assert J_fast.shape == J_ref.shape
    torch.testing.assert_close(J_fast, J_ref.detach(), rtol=1e-13, atol=1e-13 * float(J_ref.detach().abs().max()))
    # and against the dense Jacobian of the residual by autograd
    wl = w.clone().requires_grad_(True)
    J_dense = torch.stack([torch.autograd.functional.jacobian(
        lambda ww: model.residual(basis_field(B[b:b + 1], ww.unsqueeze(0)), {k: v[b:b + 1] for k, v in p.items()})[0],
        wl[b].detach()) for b in range(batch)])
    torch.testing.assert_close(J_fast, J_dense, rtol=1e-10, atol=1e-10 * float(J_dense.abs().max()))


def _dense_magnitude(model, u, p):
    """``sum_j |dr_i/du_j| |u_j|`` per sample from the dense Jacobian of the rows by autograd."""
    out = []
    for b in range(u.shape[0]):
        pb = {k: (v[b:b + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == u.shape[0] else v)
              for k, v in p.items()}
        jac = torch.autograd.functional.jacobian(lambda x: model.residual(x.reshape(u[b:b + 1].shape), pb)[0],
                                                 u[b].reshape(-1))
        out.append(jac.abs() @ u[b].reshape(-1).abs())
    return torch.stack(out)


@pytest.mark.parametrize("name,batch,subset", CASES)
def test_row_magnitude_is_the_rows_terms_magnitudes(name, batch, subset):
    """The round-off scale the LM reads for rows about a fixed field (ResidualModel.row_magnitude)."""
    pb, kw, B, params, u0 = _case(name, batch, subset)
    model = TrajectoryResidual(pb, 0.1, rows=kw.get("rows"), dofs=kw.get("dofs"), ic_rows=kw.get("ic_rows"))
    p = {**params, INITIAL: u0}
    u = basis_field(B, torch.randn(batch, B.shape[-1], dtype=F64, generator=torch.Generator().manual_seed(2)))
    mag = model.row_magnitude(u, p)
    ref = _dense_magnitude(model, u, p)
    torch.testing.assert_close(mag, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    # a steady model of the same problem's spatial rows
    steady = SteadyResidual(pb, dofs=kw.get("dofs"), t=0.0)
    us = u[:, 1]
    torch.testing.assert_close(steady.row_magnitude(us, params), _dense_magnitude(steady, us, params),
                               rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


def _layer_grad(layer, B, params, u0, loss_w):
    Bl = B.clone().requires_grad_(True)
    u, info = layer(Bl, params, u0)
    assert info.all_converged
    (u * loss_w).sum().backward()
    return Bl.grad


def assert_fast_backward_equals_reference(layer, B, params, u0, cls, monkeypatch, after_fast=None):
    """The layer's gradient with respect to ``B`` through ``cls.basis_adjoint`` equals the one
    autograd's double backward gives once that method is removed (``after_fast()``: checks of the
    layer's state right after the fast backward)."""
    loss_w = torch.randn(B.shape[0], B.shape[1], B.shape[2], dtype=F64, generator=torch.Generator().manual_seed(5))
    g_fast = _layer_grad(layer, B, params, u0, loss_w)
    if after_fast is not None:
        after_fast()
    monkeypatch.delattr(cls, "basis_adjoint")  # the autograd reference backward
    g_ref = _layer_grad(layer, B, params, u0, loss_w)
    assert g_fast.abs().max() > 0
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-9 * float(g_ref.abs().max()))


@pytest.mark.parametrize("name,batch,subset", CASES)
def test_basis_adjoint_backward_equals_the_double_backward(name, batch, subset, monkeypatch):
    pb, kw, B, params, u0 = _case(name, batch, subset)
    layer = HardConstraint(pb, dt=0.1, tol=1e-13, **kw)
    def adjoint_solved():
        assert layer.last_info.adjoint_residual.max() < 1e-10

    assert_fast_backward_equals_reference(layer, B, params, u0, TrajectoryResidual, monkeypatch, adjoint_solved)


@pytest.mark.parametrize("subset", [False, True])
def test_gradcheck_of_the_basis_adjoint_backward(subset):
    pb, kw, B, params, u0 = _case("heat", 2, subset)
    layer = HardConstraint(pb, dt=0.1, tol=1e-14, **kw)
    B = B.requires_grad_(True)

    def fn(B):
        u, info = layer(B, params, u0)
        assert info.all_converged
        return u

    assert torch.autograd.gradcheck(fn, (B,), fast_mode=True)


def _patch_case(name, batch):
    from femoe.experts import PatchConstraint

    g = torch.Generator().manual_seed(batch)
    if name == "heat":
        pb = heat()
        params = {}
        u0 = (1.0 + torch.as_tensor(pb.doflocs[0])).unsqueeze(0).expand(batch, -1).contiguous()
        k, part = 2, "slab"
    else:
        pb = navier_stokes(grid=8)
        params = ns_params(pb, batch)
        u0 = torch.zeros(batch, pb.n, dtype=F64)
        k, part = 4, "metis"
    U = 0.2 * torch.randn(batch, 4, pb.n, dtype=F64, generator=g)
    layers = {ts: PatchConstraint(pb, k, partition=part, dt=0.1, rtol=1e-13, atol=1e-13, time_solve=ts)
              for ts in ("levels", "space_time")}
    return layers, U, params, u0


@pytest.mark.parametrize("name,batch", [("heat", 1), ("heat", 2), ("ns", 2)])
def test_space_time_patch_solve_equals_the_level_by_level_march(name, batch):
    layers, U, params, u0 = _patch_case(name, batch)
    loss_w = torch.randn(U.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = {}
    for ts, layer in layers.items():
        Ul = U.clone().requires_grad_(True)
        u0l = u0.detach().clone().requires_grad_(True)
        u, info = layer(Ul, params, u0l)
        assert info.all_converged and info.converged.shape == (batch, U.shape[1] - 1)
        assert float(info.residual_interior.max()) < 1e-9
        (u * loss_w).sum().backward()
        out[ts] = (u.detach(), Ul.grad, u0l.grad)
    a, b = out["levels"], out["space_time"]
    torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-10)
    for ga, gb in zip(a[1:], b[1:]):
        assert ga.abs().max() > 0
        torch.testing.assert_close(gb, ga, rtol=1e-8, atol=1e-8 * float(ga.abs().max()))


def test_gradcheck_of_the_space_time_patch_solve():
    layers, U, params, u0 = _patch_case("heat", 2)
    layer = layers["space_time"]
    U = U[:, :3].clone().requires_grad_(True)
    u0 = u0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda U, u0: layer(U, params, u0)[0], (U, u0), fast_mode=True)


@pytest.mark.parametrize("name,batch", [("heat", 1), ("heat", 2), ("ns", 2)])
def test_moe_basis_adjoint_backward_equals_the_double_backward(name, batch, monkeypatch):
    from femoe.experts import HardConstraintMoE
    from femoe.experts._basis import _FoldedModel

    pb, _, B, params, u0 = _case(name, batch, False)
    k, part = (2, "slab") if name == "heat" else (4, "metis")
    if name == "ns":  # a mesh on which 4 experts have rows of their own
        pb = navier_stokes(grid=8)
        params, u0 = ns_params(pb, batch), torch.zeros(batch, pb.n, dtype=F64)
        B = 0.3 * torch.randn(batch, 3, pb.n, 4, dtype=F64, generator=torch.Generator().manual_seed(7))
    layer = HardConstraintMoE(pb, k, partition=part, dt=0.1, tol=1e-13)
    assert_fast_backward_equals_reference(layer, B, params, u0, _FoldedModel, monkeypatch)


@pytest.mark.parametrize("batch", [1, 2])
def test_the_basis_backward_reuses_the_last_linearisation_of_the_solve(batch, monkeypatch):
    """The backward at w* reuses the LM's last evaluation when it covered the whole batch (one
    sample, or samples stopping together); when the last trials evaluated the active samples only
    it assembles the whole batch once."""
    pb, kw, B, params, u0 = _case("heat", batch, False)
    layer = HardConstraint(pb, dt=0.1, tol=1e-13)
    calls = []
    original = Problem.trajectory_residual_and_jacobians

    def counted(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(Problem, "trajectory_residual_and_jacobians", counted)
    Bl = B.clone().requires_grad_(True)
    u, info = layer(Bl, params, u0)
    forward_calls = len(calls)
    u.square().sum().backward()
    # the backward at w* reuses the LM's last accepted evaluation (iterations + 1 in forward)
    assert forward_calls == int(info.iterations.max()) + 1
    together = bool((info.iterations == info.iterations[0]).all())
    assert len(calls) == forward_calls + (0 if together else 1)
    # another basis is evaluated afresh, not taken from the cache: as a fresh layer does
    B2 = B + 0.1 * torch.randn(B.shape, dtype=F64, generator=torch.Generator().manual_seed(9))
    u2, _ = layer(B2, params, u0)
    u3, _ = HardConstraint(pb, dt=0.1, tol=1e-13)(B2, params, u0)
    assert not torch.allclose(u2, u.detach())
    torch.testing.assert_close(u2, u3, rtol=0, atol=0)
