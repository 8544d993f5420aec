"""Boundary integrals and reactions (femoe.boundary) against scikit-fem, batched and
differentiable."""

import numpy as np
import pytest
import skfem as fe
import torch

import femoe
from femoe import Problem, boundary_integral, reaction
from femoe.errors import FieldError
from femoe.helpers import ddot, div, dot, grad

F64 = torch.float64


def _mesh():
    return fe.MeshTri().refined(3).with_defaults()


def test_boundary_integral_matches_scikit_fem_functional_at_batch_1_2_3():
    mesh = _mesh()
    basis = fe.Basis(mesh, fe.ElementTriP2())
    pb = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - w.f * v, defaults={"f": 1.0})
    fb = fe.FacetBasis(mesh, basis.elem, facets=mesh.boundaries["right"])

    @fe.Functional
    def flux(w):
        return (dot(grad(w.u), w.n) + w.x[1] * w.u) * w.a

    rng = np.random.default_rng(0)
    for B in (1, 2, 3):
        U = rng.standard_normal((B, basis.N))
        a = torch.tensor(rng.uniform(1, 2, B))
        got = boundary_integral(pb, torch.tensor(U), "right",
                                lambda u, w: (dot(grad(u), w.n) + w.x[1] * u) * w.a, {"a": a})
        ref = [fe.asm(flux, fb, u=fb.interpolate(U[b]), a=float(a[b])) for b in range(B)]
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)
    one = boundary_integral(pb, torch.tensor(U[0]), "right", lambda u, w: u * 0 + 1.0)
    assert one.shape == () and abs(float(one) - 1.0) < 1e-12  # the length of the side


def test_reaction_equals_residual_rows_and_flux_and_is_differentiable():
    mesh = _mesh()
    basis = fe.Basis(mesh, fe.ElementTriP2())
    tags = ("left", "right", "top", "bottom")
    pb = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - w.f * v, dirichlet={t: 0.0 for t in tags})
    u, _ = femoe.solve(pb, {"f": 1.0})
    A = fe.asm(fe.BilinearForm(lambda u, v, w: dot(grad(u), grad(v))), basis)
    b = fe.asm(fe.LinearForm(lambda v, w: 1.0 * v), basis)
    dofs = basis.get_dofs(mesh.boundaries["left"]).all()
    r = reaction(pb, torch.tensor(u), "left", params={"f": 1.0})
    np.testing.assert_allclose(float(r), (A @ u - b)[dofs].sum(), atol=1e-13)
    # the reactions balance the load: sum over the whole boundary = -int f dx = -1
    total = sum(float(reaction(pb, torch.tensor(u), t, params={"f": 1.0})) for t in tags)
    # corner DOFs lie on two tags: count them once
    corners = np.isin(np.arange(basis.N), np.concatenate(
        [np.intersect1d(basis.get_dofs(mesh.boundaries[s]).all(), basis.get_dofs(mesh.boundaries[t]).all())
         for s, t in [("left", "top"), ("left", "bottom"), ("right", "top"), ("right", "bottom")]]))
    total -= float((A @ u - b)[corners].sum())
    assert abs(total + 1.0) < 1e-12
    # and approximates the flux int grad(u).n ds through the side (volume vs surface formulation)
    surf = boundary_integral(pb, torch.tensor(u), "left", lambda u, w: dot(grad(u), w.n))
    assert abs(float(r) - float(surf)) < 5e-3
    ut = torch.tensor(np.stack([u, 2 * u]), requires_grad=True)
    f = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, f: reaction(pb, u, "left", params={"f": f}), (ut, f))
    assert torch.autograd.gradcheck(
        lambda u, f: boundary_integral(pb, u, "left", lambda u, w: w.f * dot(grad(u), w.n) * u, {"f": f}), (ut, f))


def test_vector_reaction_of_stokes_components():
    mesh = fe.MeshTri.init_tensor(np.linspace(0, 2, 9), np.linspace(0, 1, 5)).with_defaults()
    basis = fe.Basis(mesh, fe.ElementComposite(fe.ElementVector(fe.ElementTriP2()), fe.ElementTriP1()))

    def stokes(u, p, v, q, w):
        return ddot(grad(u), grad(v)) - div(v) * p - q * div(u)

    pb = Problem(basis, stokes, fields=("u", "p"),
                 dirichlet={"left": {"u": lambda x: np.stack([x[1] * (1 - x[1]), 0 * x[1]])},
                            "top": {"u": 0.0}, "bottom": {"u": 0.0}})
    u, _ = femoe.solve(pb)
    A = fe.asm(fe.BilinearForm(stokes), basis)
    R = A @ u
    force = reaction(pb, torch.tensor(u), "bottom", "u")
    assert force.shape == (2,)
    for c, comp in enumerate(("u_x", "u_y")):
        dofs = np.intersect1d(basis.get_dofs(mesh.boundaries["bottom"]).all(), pb.field_dofs(comp))
        np.testing.assert_allclose(float(force[c]), R[dofs].sum(), atol=1e-13)
        np.testing.assert_allclose(float(reaction(pb, torch.tensor(u), "bottom", comp)), R[dofs].sum(), atol=1e-13)
    assert float(force[0]) < 0  # the wall holds the fluid back: a force against the flow direction
    with pytest.raises(FieldError, match="name the component"):
        reaction(pb, torch.tensor(u), "bottom")
