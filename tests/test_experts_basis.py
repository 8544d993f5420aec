"""PI-HC-MoE: equal to PI-HC for one expert, exact gradients, interface reporting, placement."""

import numpy as np
import pytest
import torch

from femoe.errors import NonFiniteError, ProblemError, ShapeError
from femoe.experts import HardConstraintMoE
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.layers._residuals import basis_field

F64 = torch.float64


@pytest.fixture
def heat_problem(make_heat):
    """u_t = 0.05 u_xx, Crank-Nicolson, u = 1 on "left", 16 cells."""
    return make_heat(lambda u, v, w: w.D * dot(grad(u), grad(v)), 4, theta=0.5, dirichlet={"left": 1.0}, D=0.05)


def test_one_expert_equals_the_single_hard_constraint(make_square):
    problem = make_square("nonlinear", f=1.0)
    B = torch.randn(2, problem.n, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    u1, _ = HardConstraint(problem)(B)
    u2, info = HardConstraintMoE(problem, 1)(B)
    torch.testing.assert_close(u2, u1, rtol=0, atol=1e-12)
    assert float(info.interface_jump.max()) == 0.0


def test_one_expert_equals_the_single_hard_constraint_time_dependent(heat_problem):
    problem = heat_problem
    g = torch.Generator().manual_seed(1)
    B = torch.randn(2, 5, problem.n, 4, dtype=F64, generator=g)
    u0 = torch.rand(2, problem.n, dtype=F64, generator=g)
    u1, _ = HardConstraint(problem, dt=0.1)(B, u0=u0)
    u2, _ = HardConstraintMoE(problem, 1, dt=0.1)(B, u0=u0)
    torch.testing.assert_close(u2, u1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("global_rows", ["none", "boundary+initial"])
def test_each_expert_enforces_its_own_rows(global_rows, make_square):
    problem = make_square("nonlinear", f=1.0)
    g = torch.Generator().manual_seed(2)
    B = torch.randn(1, problem.n, 8, dtype=F64, generator=g)
    layer = HardConstraintMoE(problem, 4, partition="rcb", global_rows=global_rows)
    u, info = layer(B)
    assert info.converged.shape == (1, 4) and info.all_converged
    # expert k's weights minimise its own rows (and, by default, every Dirichlet row): rerunning
    # PI-HC restricted to those rows and the expert's DOFs gives the same values on the owned DOFs
    part = layer.partition
    group = layer.groups[0]
    compared = 0
    for k in range(4):
        own = np.nonzero(part.owner == k)[0]
        enforced = own if global_rows == "none" else np.union1d(own, problem.dirichlet_dofs)
        local = group.union.local_dofs[k]
        ref, _ = HardConstraint(problem, rows=enforced, dofs=local)(B[:, local])
        own_pos = np.searchsorted(local, own)
        torch.testing.assert_close(u[0, own], ref[0, own_pos], rtol=0, atol=1e-10)
        if global_rows == "none":
            continue
        # and it differs from the answer of its own rows only: the global rows are really there
        alone, _ = HardConstraint(problem, rows=own, dofs=local)(B[:, local])
        if not np.isin(problem.dirichlet_dofs, own).all():  # (small: weight-1 rows beside 1/M_ii rows)
            assert float((alone[0, own_pos] - ref[0, own_pos]).abs().max()) > 1e-9
            compared += 1
    assert global_rows == "none" or compared > 0  # the comparison above is not skipped for every expert
    assert float(info.interface_jump) > 0  # the stitched field is discontinuous


def test_exact_solution_in_the_span_is_recovered_without_jump(make_square):
    problem = make_square("unit_load", 3, dirichlet="all")
    from femoe.reference import solve

    u_ref, _ = solve(problem)
    g = torch.Generator().manual_seed(3)
    B = torch.cat([torch.tensor(u_ref).reshape(1, -1, 1), torch.randn(1, problem.n, 3, dtype=F64, generator=g)], -1)
    u, info = HardConstraintMoE(problem, 3, rho=0.0)(B)
    torch.testing.assert_close(u[0], torch.tensor(u_ref), rtol=0, atol=1e-9)
    assert float(info.interface_jump) < 1e-9
    assert float(info.residual_interface) < 1e-9


def test_gradcheck_steady_nonlinear_wrt_basis_and_parameter(make_square):
    problem = make_square("nonlinear", 2, f=1.0)
    layer = HardConstraintMoE(problem, 3, partition="rcb")
    g = torch.Generator().manual_seed(4)
    B = torch.randn(1, problem.n, 3, dtype=F64, generator=g, requires_grad=True)
    f = torch.tensor([1.5], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda B, f: layer(B, {"f": f})[0], (B, f), atol=1e-6)


def test_gradcheck_time_dependent_wrt_basis_and_initial_condition(heat_problem):
    problem = heat_problem
    layer = HardConstraintMoE(problem, 2, partition="slab", dt=0.1)
    g = torch.Generator().manual_seed(5)
    B = torch.randn(1, 3, problem.n, 3, dtype=F64, generator=g, requires_grad=True)
    u0 = (0.5 + torch.rand(1, problem.n, dtype=F64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda B, u0: layer(B, u0=u0)[0], (B, u0), atol=1e-6)


def test_devices_split_gives_the_same_result(make_square):
    problem = make_square("nonlinear", f=1.0)
    B = torch.randn(2, problem.n, 5, dtype=F64, generator=torch.Generator().manual_seed(6))
    one = HardConstraintMoE(problem, 4, partition="rcb")
    two = HardConstraintMoE(problem, one.partition, devices=["cpu", "cpu"])
    assert len(two.groups) == 2
    u1, i1 = one(B)
    u2, i2 = two(B)
    torch.testing.assert_close(u2, u1, rtol=0, atol=1e-12)
    torch.testing.assert_close(i2.interface_jump, i1.interface_jump)


def test_devices_split_trajectories_with_global_initial_rows(make_diffusion_sorption):
    """Two expert groups whose unions each hold part of the mesh: every expert's global initial
    rows still see level 0 of every DOF (the field, weights and iterations equal one group's)."""
    pb = make_diffusion_sorption(n_cells=12)
    g = torch.Generator().manual_seed(8)
    B = torch.randn(2, 4, pb.n, 5, dtype=F64, generator=g)
    u0 = torch.rand(2, pb.n, dtype=F64, generator=g)
    one = HardConstraintMoE(pb, 4, partition="slab", dt=10.0, tol=1e-10)
    two = HardConstraintMoE(pb, one.partition, dt=10.0, tol=1e-10, devices=["cpu", "cpu"])
    assert len(two.groups) == 2 and not any(gr.union_covers_all for gr in two.groups)
    assert one.groups[0].union_covers_all
    u1, i1 = one(B, None, u0)
    u2, i2 = two(B, None, u0)
    assert bool(i1.converged.all()) and bool(i2.converged.all())
    assert torch.equal(i1.iterations, i2.iterations)
    torch.testing.assert_close(u2, u1, rtol=0, atol=1e-12)


def test_bad_inputs(make_square, heat_problem):
    problem = make_square("nonlinear", 2, f=1.0)
    layer = HardConstraintMoE(problem, 2)
    with pytest.raises(ShapeError, match="B must have shape"):
        layer(torch.zeros(1, problem.n + 1, 3, dtype=F64))
    B = torch.zeros(1, problem.n, 3, dtype=F64)
    B[0, 5, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        layer(B)
    with pytest.raises(ProblemError, match="time-dependent"):
        HardConstraintMoE(heat_problem, 2)


@pytest.mark.parametrize("levels", [None, 3])
def test_unfold_and_fold_move_each_union_dof_to_its_expert(levels, make_diffusion_sorption):
    """The folded experts' layout (batch K, [L,] nl_max, ...) and the union's (batch, [L,] n_union,
    ...): unfold takes union DOF d from expert k(d)'s position j(d), fold puts it back with zeros in
    the padding; checked entry by entry against a loop, on a strided folded tensor (the patch part
    ahead of the global initial rows), with and without a trailing basis axis, and their gradients."""
    pb = make_diffusion_sorption(n_cells=12)
    layer = HardConstraintMoE(pb, 3, partition="slab", dt=10.0)
    g = layer.groups[0]
    K, nl, u = g.K, g.nl_max, g.union
    batch, N = 2, 3
    lead = () if levels is None else (levels,)
    axis = 1 + len(lead)
    gen = torch.Generator().manual_seed(0)
    for trail in [(), (N,)]:
        whole = torch.randn(batch * K, int(np.prod(lead, dtype=int)) * nl + 5, *trail, dtype=torch.float64, generator=gen)
        x = whole[:, :int(np.prod(lead, dtype=int)) * nl].reshape(batch * K, *lead, nl, *trail)  # strided
        assert not x.is_contiguous()
        out = g.unfold(x, axis)
        assert out.shape == (batch, *lead, u.n, *trail)
        for b in range(batch):
            for d in range(u.n):
                k = int(u.patch_of_dof[d])
                j = d - int(u.offsets[k])
                ref = x[b * K + k, ..., j, :] if trail else x[b * K + k, ..., j]
                got = out[b, ..., d, :] if trail else out[b, ..., d]
                assert torch.equal(got, ref)
        back = g.fold(out, axis)
        keep = torch.zeros(K, nl, dtype=torch.bool)
        for k in range(K):
            keep[k, : int(u.offsets[k + 1] - u.offsets[k])] = True
        mask = keep.repeat(batch, 1).reshape(batch * K, *([1] * len(lead)), nl, *([1] * len(trail)))
        assert torch.equal(back, torch.where(mask, x, torch.zeros_like(x)))
        xs = x.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: g.unfold(t, axis), (xs,))
        ys = out.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: g.fold(t, axis), (ys,))


@pytest.mark.parametrize("global_rows", ["boundary+initial", "boundary"])
@pytest.mark.parametrize("batch,groups", [(1, 1), (2, 1), (2, 2)])
def test_folded_jacobian_equals_the_folded_union_jacobian(global_rows, batch, groups, make_diffusion_sorption):
    """The folded experts' J_w comes from one sparse product laid out per expert; it equals the
    union's J_w folded to each expert's rows, then (global initial rows) c B_0, entry for entry,
    with per-sample initial weights ("paper": c = 1 / |u0|) and padding rows zero; also for each
    of two expert groups, whose unions lack DOFs (level 0 of every DOF appended to the basis)."""
    layer = HardConstraintMoE(make_diffusion_sorption(n_cells=12), 4, partition="slab", dt=10.0,
                              global_rows=global_rows, devices=None if groups == 1 else ["cpu", "cpu"])
    assert len(layer.groups) == groups
    padded = []
    for g in layer.groups:
        assert g.union_covers_all == (groups == 1)
        padded.append(_check_folded_jacobian(g, batch))
    assert groups == 2 or all(padded)  # the four experts' row counts differ: some rows are padding


def _check_folded_jacobian(g, batch) -> bool:
    """Compare a group's folded J_w with the reference; whether the group has padding rows."""
    from femoe.experts._basis import _FoldedModel
    from femoe.layers._state import INITIAL

    pb = g.problem
    model = _FoldedModel(g)
    L, N = 4, 5
    gen = torch.Generator().manual_seed(3)
    B = torch.randn(batch, L, pb.n, N, dtype=torch.float64, generator=gen)
    u0 = torch.rand(batch, pb.n, dtype=torch.float64, generator=gen) + 0.1
    p = {INITIAL: u0}
    Bf = g.gather_basis(B)
    w = torch.randn(batch * g.K, N, dtype=torch.float64, generator=gen)
    u = basis_field(Bf, w)
    calls = []
    original = _FoldedModel._folded_jacobian

    def spy(self, *a):
        calls.append(1)
        return original(self, *a)

    with torch.no_grad():
        _FoldedModel._folded_jacobian = spy
        try:
            r, J = model.linearize(u, Bf, p)
        finally:
            _FoldedModel._folded_jacobian = original
        assert calls  # the sparse product laid out per expert made J_w
        # the reference: the union's J_w, folded to the experts' rows, then c B_0
        patch, u0f = g.split(u)
        ru, Ju = g.model.linearize(g.unfold(patch, 2), g.unfold(g.split(Bf)[0], 2), model._p(p))
        T = L - 1
        ref = g.fold_rows(Ju, T)
        if u0f is not None:
            c, _ = model._ic_weights(p, batch)
            ref = torch.cat([ref, c.unsqueeze(-1) * g.split(Bf)[1]], dim=1)
        assert J.shape == ref.shape
        torch.testing.assert_close(J, ref, rtol=1e-14, atol=0)
        idx, mask = g.row_index(T, "cpu")
        assert bool((J[:, : idx.shape[1]].reshape(batch, g.K, idx.shape[1], N)[:, ~mask] == 0).all())
    return bool((~mask).any())


@pytest.mark.parametrize("global_rows", ["boundary+initial", "boundary"])
def test_gather_basis_folds_each_experts_patch_and_level_0(global_rows, make_diffusion_sorption, make_square):
    """The folded basis, entry by entry against a loop: expert k's padded patch DOFs at every
    level (zero in the padding), then with global initial rows level 0 at every DOF; a steady
    problem's patch alone; and its gradient (one gather, one scatter back)."""
    pb = make_diffusion_sorption(n_cells=12)
    cases = [(HardConstraintMoE(pb, 3, partition="slab", dt=10.0, global_rows=global_rows), (3,))]
    if global_rows == "boundary":
        sq = make_square("poisson", 2)
        cases.append((HardConstraintMoE(sq, 2, partition="slab"), ()))
    gen = torch.Generator().manual_seed(5)
    for layer, lead in cases:
        g = layer.groups[0]
        K, nl, n = g.K, g.nl_max, g.problem.n
        B = torch.randn(2, *lead, n, 3, dtype=torch.float64, generator=gen)
        out = g.gather_basis(B)
        L = lead[0] if lead else 1
        rows = L * nl + (n if g.ic_global else 0)
        assert out.reshape(2 * K, -1, 3).shape == (2 * K, rows, 3)
        flat = out.reshape(2, K, rows, 3)
        Bl = B if lead else B.unsqueeze(1)
        for b in range(2):
            for k in range(K):
                dofs = g.union.local_dofs[k]
                for lev in range(L):
                    block = flat[b, k, lev * nl:(lev + 1) * nl]
                    assert torch.equal(block[:dofs.size], Bl[b, lev, torch.as_tensor(dofs)])
                    assert bool((block[dofs.size:] == 0).all())
                if g.ic_global:
                    assert torch.equal(flat[b, k, L * nl:], B[b, 0])
        Bs = B.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: g.gather_basis(t), (Bs,))


def test_the_unrolled_experts_assemble_once_per_linearisation(make_diffusion_sorption, monkeypatch):
    """On the unrolled (grad-enabled) path the folded model makes J_w from the linearisation it
    took the rows from: two assemblies of the union per LM evaluation, the rows with J_w and the
    rows' magnitudes (made without gradients, so the graph's linearisation is not reused), not three."""
    from femoe.experts._basis import _FoldedModel
    from femoe.problem._form import WeakForm

    pb = make_diffusion_sorption(n_cells=12)
    g = torch.Generator().manual_seed(9)
    B = torch.randn(2, 3, pb.n, 4, dtype=F64, generator=g).requires_grad_(True)
    u0 = torch.rand(2, pb.n, dtype=F64, generator=g)
    layer = HardConstraintMoE(pb, 3, partition="slab", dt=10.0, tol=1e-10, backward="unrolled")
    counts = {"assemble": 0, "linearize": 0}
    assemble, linearize = WeakForm.trajectory_residual_and_jacobians, _FoldedModel.linearize

    def counted_assemble(self, *a, **k):
        counts["assemble"] += 1
        return assemble(self, *a, **k)

    def counted_linearize(self, *a, **k):
        counts["linearize"] += 1
        return linearize(self, *a, **k)

    monkeypatch.setattr(WeakForm, "trajectory_residual_and_jacobians", counted_assemble)
    monkeypatch.setattr(_FoldedModel, "linearize", counted_linearize)
    u, _ = layer(B, None, u0)
    assert counts["linearize"] > 0 and counts["assemble"] == 2 * counts["linearize"]
    u.sum().backward()
    assert B.grad is not None and torch.isfinite(B.grad).all()
