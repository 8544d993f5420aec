"""Fields and components by name, Dirichlet data per field, parameter kinds declared or
unambiguous (issue 10)."""

import numpy as np
import pytest
import skfem as fe
import torch

import femoe
from femoe import Problem
from femoe.errors import AmbiguousParameterError, FieldError, ShapeError
from femoe.helpers import ddot, div, dot, grad

F64 = torch.float64


def _channel(refine=2):
    m = fe.MeshTri.init_tensor(np.linspace(0, 2, 2 * 2**refine + 1), np.linspace(0, 1, 2**refine + 1))
    return m.with_boundaries({
        "inlet": lambda x: np.isclose(x[0], 0.0), "outlet": lambda x: np.isclose(x[0], 2.0),
        "top": lambda x: np.isclose(x[1], 1.0), "bottom": lambda x: np.isclose(x[1], 0.0)})


def stokes(u, p, v, q, w):
    return ddot(grad(u), grad(v)) - div(v) * p - q * div(u)


def _taylor_hood(mesh):
    return fe.Basis(mesh, fe.ElementComposite(fe.ElementVector(fe.ElementTriP2()), fe.ElementTriP1()))


def test_default_and_given_field_names():
    mesh = _channel(1)
    b = _taylor_hood(mesh)
    pb = Problem(b, stokes)
    assert pb.fields == ("u0", "u1") and pb.components == {"u0": ("u0_x", "u0_y"), "u1": ()}
    pb = Problem(b, stokes, fields=("u", "p"))
    assert pb.fields == ("u", "p")
    n_u, n_p = b.split_indices()[0].size, b.split_indices()[1].size
    assert pb.field_dofs("u").size == n_u and pb.field_dofs("p").size == n_p
    assert pb.field_dofs("u_x").size == pb.field_dofs("u_y").size == n_u // 2
    parts = pb.split(torch.zeros(3, b.N))
    assert parts["u"].shape == (3, n_u) and parts["p"].shape == (3, n_p)
    vec = Problem(fe.Basis(mesh, fe.ElementVector(fe.ElementTriP1())), lambda u, v, w: ddot(grad(u), grad(v)))
    assert vec.fields == ("u",) and vec.components == {"u": ("u_x", "u_y")}
    with pytest.raises(FieldError, match="one name per sub-element"):
        Problem(b, stokes, fields=("u",))
    with pytest.raises(FieldError, match="valid names"):
        Problem(b, stokes, fields=("u", "p"), dirichlet={"inlet": {"v": 0.0}})


def test_bare_value_on_a_mixed_space_is_an_error_that_says_how_to_choose():
    b = _taylor_hood(_channel(1))
    with pytest.raises(FieldError, match=r"\{'inlet': \{'u': value\}\}"):
        Problem(b, stokes, fields=("u", "p"), dirichlet={"inlet": 0.0})
    # asked for explicitly: every field
    pb = Problem(b, stokes, fields=("u", "p"), dirichlet={"inlet": {"*": 0.0}})
    tag = np.asarray(b.get_dofs(b.mesh.boundaries["inlet"]).all())
    np.testing.assert_array_equal(pb.dirichlet_dofs, np.sort(tag))


def _skfem_stokes(mesh, slip_bottom):
    b = _taylor_hood(mesh)
    A = fe.asm(fe.BilinearForm(stokes), b)
    sub = b.split_bases()[0].split_indices()
    gidx = b.split_indices()[0]
    ux, uy = gidx[sub[0]], gidx[sub[1]]

    def on(tag, idx):
        return np.intersect1d(b.get_dofs(mesh.boundaries[tag]).all(), idx)

    x = np.zeros(b.N)
    inlet_x = on("inlet", ux)
    x[inlet_x] = 4 * b.doflocs[1, inlet_x] * (1 - b.doflocs[1, inlet_x])
    D = [inlet_x, on("inlet", uy), on("top", ux), on("top", uy), on("bottom", uy)]
    if not slip_bottom:
        D.append(on("bottom", ux))
    D = np.unique(np.concatenate(D))
    return fe.solve(*fe.condense(A, np.zeros(b.N), x=x, D=D)), D


@pytest.mark.parametrize("slip_bottom", [False, True])
def test_stokes_per_field_and_per_component_dirichlet_equals_scikit_fem(slip_bottom):
    mesh = _channel(2)
    b = _taylor_hood(mesh)
    bc = {"inlet": {"u": lambda x: np.stack([4 * x[1] * (1 - x[1]), 0 * x[1]])}, "top": {"u": 0.0},
          "bottom": {"u_y": 0.0} if slip_bottom else {"u": [0.0, 0.0]}}
    pb = Problem(b, stokes, fields=("u", "p"), dirichlet=bc)
    u, info = femoe.solve(pb)
    ref, D = _skfem_stokes(mesh, slip_bottom)
    np.testing.assert_array_equal(pb.dirichlet_dofs, D)
    np.testing.assert_allclose(u, ref, atol=1e-10)
    assert not np.isin(pb.field_dofs("p"), pb.dirichlet_dofs).any()  # the pressure is never fixed


def test_dirichlet_parameter_shapes(make_square):
    pb = make_square("poisson", 2, dirichlet={"left": "g", "right": 0.0}, f=1.0)
    m = pb.dirichlet_dofs_of("left").size
    u = torch.zeros(pb.n, dtype=F64)
    # documented (B, m): per-DOF values per sample
    g = torch.rand(2, m, dtype=F64)
    R = pb.residual(u, {"g": g})
    assert R.shape == (2, pb.n)
    torch.testing.assert_close(R[:, pb.dirichlet_dofs_of("left")], -g)
    # (B,) and (B, 1): per-sample constants
    R = pb.residual(u, {"g": torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)})
    assert R.shape == (3, pb.n) and float(R[2, pb.dirichlet_dofs_of("left")[0]]) == -3.0
    # (m,) is ambiguous: one sample's per-DOF values, or m samples' constants
    with pytest.raises(AmbiguousParameterError, match="'g'.*'dirichlet' or 'constant'"):
        pb.residual(u, {"g": torch.rand(m, dtype=F64)})
    declared = make_square("poisson", 2, dirichlet={"left": "g"}, f=1.0, coefficients={"g": "dirichlet"})
    g1 = torch.rand(m, dtype=F64)
    R = declared.residual(u, {"g": g1})
    assert R.shape == (pb.n,)
    torch.testing.assert_close(R[declared.dirichlet_dofs_of("left")], -g1)
    ref, _ = femoe.solve(declared, {"g": g1})
    np.testing.assert_allclose(ref[declared.dirichlet_dofs_of("left")], g1.numpy())


def test_vector_dirichlet_parameter_per_component_order_and_gradcheck():
    mesh = fe.MeshTri().refined(1).with_defaults()
    b = fe.Basis(mesh, fe.ElementVector(fe.ElementTriP1()))
    pb = Problem(b, lambda u, v, w: ddot(grad(u), grad(v)), dirichlet={"left": {"u": "g"}, "right": 0.0})
    dofs = pb.dirichlet_dofs_of("left", "u")
    half = dofs.size // 2
    assert np.isin(dofs[:half], pb.field_dofs("u_x")).all() and np.isin(dofs[half:], pb.field_dofs("u_y")).all()
    u = torch.rand(2, pb.n, dtype=F64, requires_grad=True)
    g = torch.rand(2, dofs.size, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, g: pb.residual(u, {"g": g}), (u, g))
    ref, _ = femoe.solve(pb, {"g": g[0].detach().reshape(1, -1)})
    np.testing.assert_allclose(ref[dofs], g[0].detach().numpy())


def test_parameter_kinds_never_silently_become_a_batch(make_square):
    pb = make_square("poisson", 3, dirichlet={"left": 0.0})
    mesh = pb.mesh
    u = torch.zeros(pb.n, dtype=F64)
    with pytest.raises(AmbiguousParameterError, match="'f'.*another mesh"):
        pb.residual(u, {"f": torch.ones(pb.n + 1, dtype=F64)})
    other = fe.Basis(fe.MeshTri().refined(4), fe.ElementTriP1()).N
    with pytest.raises(AmbiguousParameterError, match="'f'"):
        pb.residual(u, {"f": torch.ones(other, dtype=F64)})
    with pytest.raises(ShapeError, match="declared 'nodal'"):
        make_square("poisson", 3, dirichlet=None, coefficients={"f": "nodal"}).residual(
            u, {"f": torch.ones(pb.n + 1, dtype=F64)})
    # (B, 1): per-sample constants (femoe run passes its inputs this way)
    R = pb.residual(u, {"f": torch.tensor([[2.0]], dtype=F64), "kappa": torch.tensor([[1.0]], dtype=F64)})
    torch.testing.assert_close(R, pb.residual(u, {"f": 2.0}))
    # a small batch of constants with u unbatched, and one matching u's batch
    assert pb.residual(u, {"f": torch.tensor([1.0, 2.0, 3.0], dtype=F64)}).shape == (3, pb.n)
    k = pb.n // 2 + 1
    assert pb.residual(u.expand(k, -1), {"f": torch.ones(k, dtype=F64)}).shape == (k, pb.n)
    # declared constants of any length
    c = make_square("poisson", 3, dirichlet=None, coefficients={"f": "constant"})
    assert c.residual(u, {"f": torch.ones(pb.n + 1, dtype=F64)}).shape == (pb.n + 1, pb.n)
    # quadrature values
    nqp = np.asarray(pb.basis.dx).shape[1]
    fq = torch.rand(mesh.nelements, nqp, dtype=F64)
    from skfem import asm, LinearForm
    R = pb.residual(u, {"f": fq})
    b = asm(LinearForm(lambda v, w: w.fq * v), pb.basis, fq=fq.numpy())
    np.testing.assert_allclose(R.numpy()[pb.free_dofs], -b[pb.free_dofs], atol=1e-13)
    with pytest.raises(ShapeError, match="batch sizes disagree"):
        pb.residual(torch.zeros(2, pb.n, dtype=F64), {"f": torch.ones(3, pb.n, dtype=F64)})


def test_a_parameter_no_form_reads_warns_once(make_square):
    from femoe.errors import UnusedParameterWarning

    pb = make_square("poisson", 2, dirichlet={"left": "g"})
    u = torch.zeros(pb.n, dtype=F64)
    with pytest.warns(UnusedParameterWarning, match=r"\['kappa'\]"):
        pb.residual(u, {"f": 1.0, "g": 0.0, "kappa": torch.tensor([[2.0]], dtype=F64)})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pb.residual(u, {"f": 1.0, "g": 0.0})  # every parameter read: silent
        pb.residual(u, {"f": 1.0, "g": 0.0, "kappa": 1.0})  # warned once already


def test_patch_experts_on_a_mixed_space_keep_per_field_dirichlet_sets():
    # experts read problem.dirichlet_dofs: with per-field data the pressure stays free in every
    # patch, and interiors solved with exact interface values give the global solution
    from femoe.experts import PatchConstraint

    mesh = _channel(2)
    b = _taylor_hood(mesh)
    bc = {"inlet": {"u": lambda x: np.stack([4 * x[1] * (1 - x[1]), 0 * x[1]])}, "top": {"u": 0.0},
          "bottom": {"u_y": 0.0}}
    pb = Problem(b, stokes, fields=("u", "p"), dirichlet=bc)
    ref, _ = femoe.solve(pb)
    layer = PatchConstraint(pb, 3, partition="rcb")
    assert not np.isin(pb.field_dofs("p"), layer.partition.dirichlet).any()
    u, info = layer(torch.tensor(ref).unsqueeze(0))
    np.testing.assert_allclose(u[0].numpy(), ref, atol=1e-9)
    # a perturbed interface changes the field but never the Dirichlet values
    noisy = torch.tensor(ref).unsqueeze(0) + 0.01 * torch.randn(1, pb.n, dtype=F64)
    u2, _ = layer(noisy)
    np.testing.assert_allclose(u2[0, pb.dirichlet_dofs].numpy(), ref[pb.dirichlet_dofs], atol=1e-12)


def test_gradcheck_quadrature_parameter_and_mixed_dirichlet_parameter_through_the_solve(make_square):
    from femoe.layers import nonlinear_solve

    pb = make_square("poisson", 1, dirichlet={"left": 0.0})
    mesh = pb.mesh
    nqp = np.asarray(pb.basis.dx).shape[1]
    u = torch.rand(2, pb.n, dtype=F64, requires_grad=True)
    fq = torch.rand(2, mesh.nelements, nqp, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, f: pb.residual(u, {"f": f}), (u, fq))

    # Stokes on a small channel, inflow as a (B, m) Dirichlet parameter, through the adjoint
    ch = _channel(1)
    st = Problem(_taylor_hood(ch), stokes, fields=("u", "p"),
                 dirichlet={"inlet": {"u_x": "g"}, "top": {"u": 0.0}, "bottom": {"u": 0.0}})
    m = st.dirichlet_dofs_of("inlet").size
    y = torch.as_tensor(st.doflocs[1, st.dirichlet_dofs_of("inlet")])
    g = (y * (1 - y)).expand(2, -1).clone().requires_grad_(True)

    def outflow(g):
        u = nonlinear_solve(st, {"g": g}, atol=1e-13, rtol=0.0)
        return u[:, st.field_dofs("u_x")].sum(-1)

    assert g.shape == (2, m)
    assert torch.autograd.gradcheck(outflow, (g,), atol=1e-7)


def test_declared_vector_constant_is_not_a_batch():
    # undeclared, (2,) would be two samples of a constant; declared "vector" it is one body force
    mesh = fe.MeshTri().refined(2).with_defaults()
    basis = fe.Basis(mesh, fe.ElementVector(fe.ElementTriP1()))

    def form(u, v, w):
        return ddot(grad(u), grad(v)) - dot(w.g, v)

    pb = Problem(basis, form, dirichlet={"left": 0.0}, coefficients={"g": "vector"})
    g = torch.tensor([0.5, -2.0], dtype=F64)
    u = torch.rand(pb.n, dtype=F64)
    R = pb.residual(u, {"g": g})
    assert R.shape == (pb.n,)
    A = fe.asm(fe.BilinearForm(lambda u, v, w: ddot(grad(u), grad(v))), basis)
    b = fe.asm(fe.LinearForm(lambda v, w: 0.5 * v[0] - 2.0 * v[1]), basis)
    np.testing.assert_allclose(R.numpy()[pb.free_dofs], (A @ u.numpy() - b)[pb.free_dofs], atol=1e-12)
    Rb = pb.residual(u, {"g": torch.stack([g, 2 * g])})  # (B, ncomp)
    assert Rb.shape == (2, pb.n)
    torch.testing.assert_close(Rb[0], R)
    gg = torch.stack([g, 2 * g]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda g: pb.residual(u, {"g": g}), (gg,))
