"""Torch weak-form evaluation against scikit-fem's own assembly and against autograd."""

import numpy as np
import pytest
import skfem as fe
import torch
from skfem.helpers import dot as sk_dot, grad as sk_grad

from femoe.errors import ProblemError, ShapeError
from femoe.helpers import dot, grad, ddot, sym_grad, div, eye, trace
from femoe.problem import Problem

F64 = torch.float64

MESHES = {
    "line": lambda: fe.MeshLine().refined(4),
    "tri": lambda: fe.MeshTri.init_symmetric().refined(2),
    "quad": lambda: fe.MeshQuad().refined(2),
    "tet": lambda: fe.MeshTet().refined(1),
}
ELEMENTS = {
    ("line", 1): fe.ElementLineP1, ("line", 2): fe.ElementLineP2,
    ("tri", 1): fe.ElementTriP1, ("tri", 2): fe.ElementTriP2,
    ("quad", 1): fe.ElementQuad1, ("quad", 2): fe.ElementQuad2,
    ("tet", 1): fe.ElementTetP1, ("tet", 2): fe.ElementTetP2,
}


def nonlinear(u, v, w):
    # -div((kappa + u^2) grad u) + u^3 = f
    return dot((w.kappa + u**2) * grad(u), grad(v)) + u**3 * v - w.f * v


@fe.LinearForm
def sk_residual(v, w):
    u = w["u"]
    return sk_dot((w["kappa"] + u**2) * sk_grad(u), sk_grad(v)) + u**3 * v - w["f"] * v


@fe.BilinearForm
def sk_jacobian(du, v, w):
    u = w["u"]
    return (sk_dot((w["kappa"] + u**2) * sk_grad(du), sk_grad(v))
            + sk_dot(2 * u * du * sk_grad(u), sk_grad(v)) + 3 * u**2 * du * v)


def _state(basis, seed=0):
    x = basis.doflocs
    rng = np.random.default_rng(seed)
    return np.sin(2 * x[0]) + 0.3 * x.sum(0) + 0.1 * rng.standard_normal(basis.N)


@pytest.mark.parametrize("cell,order", sorted(ELEMENTS))
def test_residual_and_jacobian_match_scikit_fem(cell, order):
    mesh = MESHES[cell]()
    basis = fe.Basis(mesh, ELEMENTS[(cell, order)]())
    kappa = 1.0 + basis.doflocs[0] ** 2  # nodal coefficient field
    problem = Problem(basis, nonlinear, defaults={"f": 2.0})
    u = _state(basis)
    R, J = problem.residual_and_jacobian(torch.tensor(u), {"kappa": torch.tensor(kappa)})
    kw = dict(u=basis.interpolate(u), kappa=basis.interpolate(kappa), f=2.0)
    R_ref = sk_residual.assemble(basis, **kw)
    J_ref = sk_jacobian.assemble(basis, **kw)
    scale = np.abs(J_ref).max()
    assert np.abs(R.numpy() - R_ref).max() <= 1e-12 * scale
    assert abs(J.to_scipy(0) - J_ref).max() <= 1e-12 * scale
    # the same integrand, run by scikit-fem itself through femoe.helpers
    R_sk = fe.LinearForm(lambda v, w: nonlinear(w["u"], v, w)).assemble(basis, **kw)
    assert np.abs(R_sk - R_ref).max() <= 1e-12 * scale


def test_linear_forms_are_accepted_as_they_are():
    from skfem.models.poisson import laplace, unit_load

    mesh = fe.MeshTri().refined(3).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP2())
    problem = Problem(basis, bilinear=laplace, linear=unit_load)
    u = torch.tensor(_state(basis))
    R, J = problem.residual_and_jacobian(u)
    A, b = laplace.assemble(basis), unit_load.assemble(basis)
    np.testing.assert_allclose(R.numpy(), A @ u.numpy() - b, atol=1e-12)
    assert abs(J.to_scipy(0) - A).max() < 1e-12


def test_vector_space_linear_elasticity_matches_scikit_fem():
    from skfem.models.elasticity import linear_elasticity, lame_parameters

    mesh = fe.MeshTri().refined(2)
    basis = fe.Basis(mesh, fe.ElementVector(fe.ElementTriP2()))
    lam, mu = lame_parameters(1.0, 0.3)

    def elastic(u, v, w):
        eps_u, eps_v = sym_grad(u), sym_grad(v)
        return ddot(2 * mu * eps_u + lam * eye(trace(eps_u), 2), eps_v)

    problem = Problem(basis, elastic)
    u = torch.tensor(_state(basis))
    R, J = problem.residual_and_jacobian(u)
    K = linear_elasticity(lam, mu).assemble(basis)
    np.testing.assert_allclose(R.numpy(), K @ u.numpy(), atol=1e-11)
    assert abs(J.to_scipy(0) - K).max() < 1e-11


def test_mixed_stokes_space_matches_scikit_fem():
    mesh = fe.MeshTri().refined(2)
    basis = fe.Basis(mesh, fe.ElementVector(fe.ElementTriP2()) * fe.ElementTriP1())

    def stokes(u, p, v, q, w):
        return ddot(grad(u), grad(v)) - div(v) * p - div(u) * q

    @fe.BilinearForm
    def sk_stokes(u, p, v, q, w):
        from skfem.helpers import ddot as dd, div as dv, grad as gr
        return dd(gr(u), gr(v)) - dv(v) * p - dv(u) * q

    problem = Problem(basis, stokes)
    u = torch.tensor(_state(basis))
    R, J = problem.residual_and_jacobian(u)
    K = sk_stokes.assemble(basis)
    np.testing.assert_allclose(R.numpy(), K @ u.numpy(), atol=1e-11)
    assert abs(J.to_scipy(0) - K).max() < 1e-11


def test_robin_facet_term_and_dirichlet_rows():
    mesh = fe.MeshTri().refined(3).with_boundaries(
        {"left": lambda x: x[0] == 0, "right": lambda x: x[0] == 1})
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(
        basis, lambda u, v, w: dot(grad(u), grad(v)),
        facets={"right": lambda u, v, w: w.alpha * u * v - w.g * v},
        dirichlet={"left": lambda x: 1 + x[1]},
        defaults={"alpha": 2.0, "g": 0.5},
    )
    u = torch.tensor(_state(basis))
    R, J = problem.residual_and_jacobian(u)
    fb = fe.FacetBasis(mesh, basis.elem, facets=mesh.boundaries["right"])
    A = fe.BilinearForm(lambda u, v, w: sk_dot(sk_grad(u), sk_grad(v))).assemble(basis)
    A = A + fe.BilinearForm(lambda u, v, w: 2.0 * u * v).assemble(fb)
    b = fe.LinearForm(lambda v, w: 0.5 * v).assemble(fb)
    R_ref = A @ u.numpy() - b
    D = problem.dirichlet_dofs
    assert set(D) == set(basis.get_dofs(mesh.boundaries["left"]).all())
    R_ref[D] = u.numpy()[D] - (1 + basis.doflocs[1, D])
    np.testing.assert_allclose(R.numpy(), R_ref, atol=1e-13)
    Jd = J.to_scipy(0).toarray()
    Ad = A.toarray()
    Ad[D] = 0
    Ad[D, D] = 1
    np.testing.assert_allclose(Jd, Ad, atol=1e-13)


@pytest.mark.parametrize("cell", ["tri", "tet"])
def test_jacobian_equals_autograd_jacobian(cell):
    mesh = MESHES[cell]()
    basis = fe.Basis(mesh, ELEMENTS[(cell, 1)]())
    problem = Problem(basis, nonlinear, defaults={"f": 1.0, "kappa": 0.5})
    u = torch.tensor(_state(basis))
    J = problem.jacobian(u).to_dense()[0]
    J_ad = torch.autograd.functional.jacobian(lambda x: problem.residual(x), u)
    torch.testing.assert_close(J, J_ad, rtol=0, atol=1e-12)


def test_gradcheck_residual_and_jacobian_wrt_u_and_params():
    mesh = fe.MeshTri().refined(1).with_boundaries({"left": lambda x: x[0] == 0})
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, nonlinear, dirichlet={"left": "g"}, coefficients={"kappa": "element"})
    u = torch.tensor(_state(basis)[None].repeat(2, 0), requires_grad=True)
    kappa = torch.rand(2, mesh.nelements, dtype=F64, requires_grad=True)
    f = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    g = torch.tensor([0.3, 0.7], dtype=F64, requires_grad=True)

    def fn(u, kappa, f, g):
        R, J = problem.residual_and_jacobian(u, {"kappa": kappa, "f": f, "g": g})
        return R, J.values

    assert torch.autograd.gradcheck(fn, (u, kappa, f, g))
    assert torch.autograd.gradgradcheck(lambda u, k: problem.residual(u, {"kappa": k, "f": f, "g": g}), (u, kappa))


def test_batch_of_parameters_gives_per_sample_results():
    mesh = fe.MeshTri().refined(2)
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, nonlinear, defaults={"kappa": 1.0})
    u = torch.tensor(_state(basis))
    f = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    R = problem.residual(u, {"f": f})
    assert R.shape == (3, basis.N)
    for i in range(3):
        torch.testing.assert_close(R[i], problem.residual(u, {"f": float(f[i])}))


def test_float32_and_device_follow_the_input():
    mesh = fe.MeshTri().refined(2)
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, nonlinear, defaults={"kappa": 1.0, "f": 1.0})
    u64 = torch.tensor(_state(basis))
    R32, J32 = problem.residual_and_jacobian(u64.float())
    assert R32.dtype == torch.float32 and J32.values.dtype == torch.float32
    torch.testing.assert_close(R32.double(), problem.residual(u64), rtol=1e-5, atol=1e-5)


def test_theta_scheme_step_and_trajectory_residuals():
    mesh = fe.MeshLine().refined(4).with_boundaries({"left": lambda x: x[0] == 0})
    basis = fe.Basis(mesh, fe.ElementLineP1())
    problem = Problem(basis, lambda u, v, w: w.D * dot(grad(u), grad(v)), storage="mass", theta=0.5,
                      dirichlet={"left": 1.0}, defaults={"D": 0.1})
    M = fe.BilinearForm(lambda u, v, w: u * v).assemble(basis)
    K = fe.BilinearForm(lambda u, v, w: 0.1 * sk_dot(sk_grad(u), sk_grad(v))).assemble(basis)
    rng = np.random.default_rng(1)
    u0, u1, u2 = (rng.standard_normal(basis.N) for _ in range(3))
    dt = 0.05
    R1, J1 = problem.step_residual(torch.tensor(u1), torch.tensor(u0), dt, jacobian=True)
    ref = M @ (u1 - u0) / dt + 0.5 * K @ u1 + 0.5 * K @ u0
    D = problem.dirichlet_dofs
    ref[D] = u1[D] - 1.0
    np.testing.assert_allclose(R1.numpy(), ref, atol=1e-12)
    Jref = (M / dt + 0.5 * K).toarray()
    Jref[D] = 0
    Jref[D, D] = 1
    np.testing.assert_allclose(J1.to_scipy(0).toarray(), Jref, atol=1e-12)
    U = torch.tensor(np.stack([u1, u2]))[None]
    Rt = problem.trajectory_residual(U, torch.tensor(u0), dt)
    torch.testing.assert_close(Rt[0, 0], R1)
    torch.testing.assert_close(Rt[0, 1], problem.step_residual(torch.tensor(u2), torch.tensor(u1), dt, t_new=2 * dt))


def test_bad_inputs_raise_clear_errors():
    mesh = fe.MeshTri().refined(1)
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, nonlinear, defaults={"kappa": 1.0, "f": 1.0})
    with pytest.raises(ShapeError, match="shape"):
        problem.residual(torch.zeros(3, dtype=F64))
    with pytest.raises(ShapeError, match="float"):
        problem.residual(torch.zeros(basis.N, dtype=torch.int64))
    with pytest.raises(ProblemError, match="not defined on the mesh"):
        Problem(basis, nonlinear, dirichlet={"nowhere": 0.0})
    bad = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - 1.0)
    with pytest.raises(ProblemError, match="not linear in the test"):
        bad.residual(torch.zeros(basis.N, dtype=F64))
    vec = Problem(basis, lambda u, v, w: grad(u) * v)
    with pytest.raises(ProblemError, match="one number per quadrature point"):
        vec.residual(torch.zeros(basis.N, dtype=F64))
    with pytest.raises(ProblemError, match="not defined"):
        Problem(basis, lambda u, v, w: w.nope * v).residual(torch.zeros(basis.N, dtype=F64))


def test_patch_union_rows_equal_parent_rows_where_the_star_is_complete():
    from skfem.models.poisson import laplace

    from femoe.partition import partition_experts

    mesh = fe.MeshTri().refined(3).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP2())
    problem = Problem(
        basis, lambda u, v, w: dot((w.kappa + u**2) * grad(u), grad(v)) - w.f * v,
        facets={"right": lambda u, v, w: w.alpha * u * v}, bilinear=laplace,
        dirichlet={"left": "g"}, coefficients={"alpha": "element"}, defaults={"f": 1.0},
    )
    part = partition_experts(basis, 3, method="rcb", dirichlet=problem.dirichlet_dofs)
    ed = basis.element_dofs
    sets = [np.nonzero(np.isin(ed, np.nonzero(part.owner == k)[0]).any(0))[0] for k in range(3)]
    union = problem.restrict(sets)
    assert union.n == sum(len(d) for d in union.local_dofs) > problem.n
    u = torch.tensor(_state(basis))
    params = {"kappa": torch.tensor(1 + basis.doflocs[0]), "alpha": torch.rand(mesh.nelements, dtype=F64),
              "g": torch.tensor(0.25, dtype=F64)}
    R, J = problem.residual_and_jacobian(u, params)
    Ru, Ju = union.residual_and_jacobian(union.gather(u), params)
    J, Ju = J.to_scipy(0), Ju.to_scipy(0)
    for k in range(3):
        own = np.nonzero(part.owner == k)[0]
        loc = np.searchsorted(union.local_dofs[k], own) + union.offsets[k]
        assert union.complete_rows[loc].all()
        np.testing.assert_allclose(Ru.numpy()[loc], R.numpy()[own], atol=1e-13)
        blk = slice(union.offsets[k], union.offsets[k + 1])
        assert abs(Ju[loc][:, blk] - J[own][:, union.local_dofs[k]]).max() < 1e-13
        # no coupling between different patches' copies
        assert abs(Ju[loc]).sum() == pytest.approx(abs(Ju[loc][:, blk]).sum())
    assert not union.complete_rows.all()  # halo rows are partial


def test_level_jacobians_equal_per_level_jacobians():
    mesh = fe.MeshTri().refined(2).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - w.f * v,
                      storage=lambda u, v, w: (u + u**3) * v, theta=0.5, dirichlet={"left": 0.0},
                      defaults={"f": 1.0})
    U = torch.rand(2, 4, basis.N, dtype=F64, generator=torch.Generator().manual_seed(0))
    dt = 0.1
    P, Q = problem.level_jacobians(U, dt)
    for b in range(2):
        for level in range(4):
            x = U[b, level]
            _, Pl = problem.step_residual(x, x, dt, t_new=level * dt, jacobian=True)
            Ql = problem.jacobian(x, t=level * dt)
            torch.testing.assert_close(P.values[b * 4 + level], Pl.values[0])
            torch.testing.assert_close(Q.values[b * 4 + level], Ql.values[0])


def _pair_and_fallback_jacobians(make, batch, monkeypatch):
    """``residual_and_jacobian`` of the problem ``make()`` at a batch of states, once through the
    per-element pair tensor (``phi_pair``) and once through the two batched matmuls used when
    that tensor would be too large (``PAIR_MAX_ENTRIES = 0``)."""
    import femoe.assembly.torch_basis as tbm

    out = []
    for cap in (tbm.PAIR_MAX_ENTRIES, 0):
        monkeypatch.setattr(tbm, "PAIR_MAX_ENTRIES", cap)
        problem, params = make()
        assert ("phi_pair" in problem._tb.tensors("cpu", F64)) == (cap > 0)
        u = torch.as_tensor(np.stack([_state(problem.basis, seed=s) for s in range(batch)]))
        R, J = problem.residual_and_jacobian(u, params)
        out.append((problem, R, J))
    return out


def _scalar_p2():
    basis = fe.Basis(fe.MeshTri.init_symmetric().refined(2), fe.ElementTriP2())
    return Problem(basis, nonlinear, defaults={"f": 2.0}), {"kappa": torch.tensor(1.0 + basis.doflocs[0] ** 2)}


def _mixed_p1p1():  # the (omega, psi) space of Navier-Stokes, with a nonlinear coupling
    basis = fe.Basis(fe.MeshTri().refined(2), fe.ElementTriP1() * fe.ElementTriP1())

    def form(w_, p_, v, q, w):
        return (dot(grad(w_), grad(v)) + w_ * (grad(p_)[0] * grad(w_)[1] - grad(p_)[1] * grad(w_)[0]) * v
                + dot(grad(p_), grad(q)) - w_ * q)

    return Problem(basis, form), {}


def _vector_p2():
    basis = fe.Basis(fe.MeshTri().refined(1), fe.ElementVector(fe.ElementTriP2()))
    return Problem(basis, lambda u, v, w: ddot(sym_grad(u), sym_grad(v)) + dot(u, u) * trace(grad(v))), {}


@pytest.mark.parametrize("make", [_scalar_p2, _mixed_p1p1, _vector_p2], ids=["scalar-P2", "mixed-P1xP1", "vector-P2"])
@pytest.mark.parametrize("batch", [1, 2])
def test_local_jacobian_without_the_pair_tensor_equals_it_and_autograd(make, batch, monkeypatch):
    (pb, R0, J0), (_, R1, J1) = _pair_and_fallback_jacobians(make, batch, monkeypatch)
    torch.testing.assert_close(R1, R0, rtol=0, atol=0)
    scale = float(J0.values.abs().max())
    torch.testing.assert_close(J1.values, J0.values, rtol=1e-12, atol=1e-13 * scale)
    # and against the dense autograd Jacobian of the residual, sample by sample
    _, params = make()
    for b in range(batch):
        u = torch.as_tensor(_state(pb.basis, seed=b))
        dense = torch.autograd.functional.jacobian(lambda x: pb.residual(x, params).reshape(-1), u)
        np.testing.assert_allclose(J1.to_scipy(b).toarray(), dense.numpy(), rtol=1e-10, atol=1e-10 * scale)


def _reads(problem):
    """The jets each cell integrand was found to read: ``{integrand: (test, trial)}``."""
    return {v[0]: v[1:] for v in problem._tb.__dict__.get("_reads", {}).values()}


def _every_jet(make, u):
    """``residual_and_jacobian`` at ``u`` of a fresh ``make()`` evaluated over every jet (the record
    of reads patched to every jet): the reference the restricted evaluation must equal."""
    from unittest import mock

    with mock.patch("femoe.assembly.form._jets_of", lambda tb, seen, side: tuple(range(tb.n_jets))):
        return make().residual_and_jacobian(u)


def _sorption(u, v, w):  # reads u and v, not their gradients
    return (u + 0.5 * (u * u + 0.1) ** 0.8) * v


def _mixed_partial(w_, p_, v, q, w):  # reads w_, grad p_ (trial) and v, grad q (test)
    return w_ ** 3 * v + dot(grad(p_), grad(q)) * (1 + w_ ** 2)


def _mixed_test3_trial1(a, b, v, q, w):  # trial: a's value; test: grad v (2 jets), q's value
    return a ** 2 * grad(v)[0] + torch.sin(a.value) * q


def _mixed_test1_trial5(a, b, v, q, w):  # trial: grad a, b and grad b; test: v's value
    return (dot(grad(a), grad(b)) + b ** 3) * v


def _mixed(form):
    return lambda: Problem(fe.Basis(fe.MeshTri().refined(2), fe.ElementTriP1() * fe.ElementTriP1()), form)


def _line(form, **kw):
    return lambda: Problem(fe.Basis(fe.MeshLine().refined(4).with_boundaries({"right": lambda x: x[0] == 1}),
                                    fe.ElementLineP1()), form, **kw)


# jets of P1 x P1 on triangles: field 0 value 0, gradient 1-2; field 1 value 3, gradient 4-5
JET_CASES = {
    "scalar-P1": (_line(_sorption), _sorption, ((0,), (0,))),
    "scalar-P2": (lambda: Problem(fe.Basis(fe.MeshTri().refined(2), fe.ElementTriP2()), _sorption), _sorption,
                  ((0,), (0,))),
    "mixed-P1xP1": (_mixed(_mixed_partial), _mixed_partial, ((0, 4, 5), (0, 4, 5))),
    "mixed-test3-trial1": (_mixed(_mixed_test3_trial1), _mixed_test3_trial1, ((1, 2, 3), (0,))),
    "mixed-test1-trial5": (_mixed(_mixed_test1_trial5), _mixed_test1_trial5, ((0,), (1, 2, 3, 4, 5))),
}


@pytest.mark.parametrize("cap", ["pair", "fallback"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", sorted(JET_CASES))
def test_forms_are_assembled_over_the_jets_they_read(case, batch, cap, monkeypatch):
    """A form that reads some of its fields' values and gradients is assembled over those jets
    only (the others' coefficients and derivatives are zero): residual and Jacobian equal the
    evaluation over every jet and the dense autograd Jacobian, per sample, on scalar and mixed
    spaces (test and trial jets alike or not), with and without the pair tensor."""
    import femoe.assembly.torch_basis as tbm

    if cap == "fallback":
        monkeypatch.setattr(tbm, "PAIR_MAX_ENTRIES", 0)
    make, form, expected = JET_CASES[case]
    problem = make()
    u = torch.as_tensor(np.stack([_state(problem.basis, seed=s) for s in range(batch)]))
    R, J = problem.residual_and_jacobian(u)
    assert _reads(problem)[form] == expected
    assert ("phi_pair" in problem._tb.tensors("cpu", F64)) == (cap == "pair")
    R_all, J_all = _every_jet(make, u)
    torch.testing.assert_close(R, R_all, rtol=0, atol=1e-14 * float(R_all.abs().max()))
    torch.testing.assert_close(J.values, J_all.values, rtol=0, atol=1e-14 * float(J_all.values.abs().max()))
    for b in range(batch):
        dense = torch.autograd.functional.jacobian(lambda x: problem.residual(x).reshape(-1), u[b])
        np.testing.assert_allclose(J.to_scipy(b).toarray(), dense.numpy(), rtol=1e-12, atol=1e-12)


def test_a_term_that_reads_no_trial_jet():
    """A facet source ``g v`` next to a nonlinear cell term: the source reads no trial jet (zero
    derivative), its residual is still assembled; both equal the evaluation over every jet."""
    make = _line(lambda u, v, w: u ** 3 * v + dot(grad(u), grad(v)), facets={"right": lambda u, v, w: w.g * v},
                 defaults={"g": 1.5})
    problem = make()
    u = torch.as_tensor(_state(problem.basis))
    R, J = problem.residual_and_jacobian(u)
    facet_tb = problem._facets[0].tb
    assert [v[1:] for v in facet_tb.__dict__["_reads"].values()] == [((0,), ())]
    R_all, J_all = _every_jet(make, u)
    torch.testing.assert_close(R, R_all, rtol=0, atol=1e-14)
    torch.testing.assert_close(J.values, J_all.values, rtol=0, atol=1e-14)
    right = int(np.argmax(problem.basis.doflocs[0]))
    assert float(R[right] - make().residual(u, {"g": 0.0})[right]) == pytest.approx(1.5)  # the source is in its row


def test_a_form_whose_reads_depend_on_the_state_is_never_truncated():
    """A form that reads ``grad u`` and ``grad v`` only at some states: evaluated first where it
    does not (assembled over the values alone), then where it does, the second evaluation sees the
    read outside the record, is evaluated again over every jet and widens the record; residual and
    Jacobian equal the evaluation over every jet and autograd's at both states."""
    calls = []

    def form(u, v, w):
        calls.append(1)
        if float(u.value.detach().abs().max()) > 1.0:
            return u ** 2 * v + dot(grad(u), grad(v))
        return u ** 2 * v

    def make():
        return Problem(fe.Basis(fe.MeshTri().refined(2), fe.ElementTriP1()), form)

    problem = make()
    base = _state(problem.basis, seed=1)
    small = torch.as_tensor(0.1 * base / np.abs(base).max())
    large = 3.0 * small / float(small.abs().max())
    for u, expected in ((small, ((0,), (0,))), (large, ((0, 1, 2), (0, 1, 2)))):
        R, J = problem.residual_and_jacobian(u)
        assert _reads(problem)[form] == expected
        R_all, J_all = _every_jet(make, u)
        torch.testing.assert_close(R, R_all, rtol=0, atol=1e-14 * float(R_all.abs().max()))
        torch.testing.assert_close(J.values, J_all.values, rtol=0, atol=1e-14 * float(J_all.values.abs().max()))
        dense = torch.autograd.functional.jacobian(lambda x: problem.residual(x).reshape(-1), u)
        np.testing.assert_allclose(J.to_scipy(0).toarray(), dense.numpy(), rtol=1e-12, atol=1e-12)
    n = len(calls)
    problem.residual_and_jacobian(large)
    assert len(calls) == n + 1  # the widened record now holds: one evaluation


def test_a_form_may_build_fields_of_the_type_it_is_given():
    """``type(u)(value, grad)`` inside a form (a field of the class it was handed) works."""
    def form(u, v, w):
        doubled = type(u)(2 * u.value, 2 * u.grad)
        return doubled * v + dot(grad(doubled), grad(v))

    problem = Problem(fe.Basis(fe.MeshTri().refined(1), fe.ElementTriP1()), form)
    u = torch.as_tensor(_state(problem.basis))
    R = problem.residual(u)
    ref = Problem(problem.basis, lambda u, v, w: 2 * u * v + 2 * dot(grad(u), grad(v))).residual(u)
    torch.testing.assert_close(R, ref, rtol=1e-13, atol=1e-13)
