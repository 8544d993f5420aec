"""Facet terms with ``w.n``, ``w.x``, ``w.h`` against scikit-fem's FacetBasis assembly, at batch
sizes 1, 2 and 3, P1 and P2, 2D and 3D, scalar and vector (issue 10: the normal used to line up
with the batch axis, raising at batch 1 and giving wrong residuals at batch 2)."""

import numpy as np
import pytest
import skfem as fe
import torch

from femoe import Problem
from femoe.helpers import dot, grad, mul, sym_grad

F64 = torch.float64


def _mesh(dim):
    if dim == 2:
        m = fe.MeshTri().refined(2)
    else:
        m = fe.MeshTet().refined(1)
    return m.with_boundaries({"right": lambda x: np.isclose(x[0], 1.0), "bottom": lambda x: np.isclose(x[1], 0.0)})


def laplace(u, v, w):
    return dot(grad(u), grad(v))


def robin(u, v, w):  # Robin with an x-dependent coefficient and a normal-derivative term
    return (1.0 + w.x[0] + w.x[1] ** 2) * u * v + 0.3 * dot(grad(u), w.n) * v


def nitsche(u, v, w):
    return -dot(grad(u), w.n) * v - dot(grad(v), w.n) * u + 10.0 / w.h * u * v


def elasticity(u, v, w):
    return 2.0 * (sym_grad(u) * sym_grad(v)).sum((0, 1)) + dot(u, v) * 0.0


def traction(u, v, w):  # sigma(u) n . v plus a normal spring (u . n)(v . n)
    return dot(mul(sym_grad(u), w.n), v) + 5.0 * dot(u, w.n) * dot(v, w.n) * w.x[1]


CASES = [
    ("scalar", robin), ("scalar", nitsche), ("vector", traction),
]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("kind,facet", CASES, ids=["robin", "nitsche", "traction"])
def test_facet_terms_match_scikit_fem_at_every_batch_size(dim, order, kind, facet):
    mesh = _mesh(dim)
    scalar = {(2, 1): fe.ElementTriP1(), (2, 2): fe.ElementTriP2(), (3, 1): fe.ElementTetP1(),
              (3, 2): fe.ElementTetP2()}[dim, order]
    elem = scalar if kind == "scalar" else fe.ElementVector(scalar)
    basis = fe.Basis(mesh, elem)
    volume = laplace if kind == "scalar" else elasticity
    fb = fe.FacetBasis(mesh, elem, facets=mesh.boundaries["right"])
    A = (fe.asm(fe.BilinearForm(volume), basis) + fe.asm(fe.BilinearForm(facet), fb)).toarray()
    problem = Problem(basis, volume, facets={"right": facet})
    rng = np.random.default_rng(0)
    for B in (1, 2, 3):
        U = rng.standard_normal((B, basis.N))
        R, J = problem.residual_and_jacobian(torch.tensor(U))
        np.testing.assert_allclose(R.numpy(), U @ A.T, atol=1e-11 * np.abs(A).max() * 10)
        for b in range(B):
            np.testing.assert_allclose(J.to_scipy(b).toarray(), A, atol=1e-11 * np.abs(A).max())
    # identical samples give identical residuals
    same = torch.tensor(rng.standard_normal(basis.N)).expand(2, -1)
    R2 = problem.residual(same)
    torch.testing.assert_close(R2[0], R2[1], atol=0, rtol=0)
    torch.testing.assert_close(problem.residual(same[0]), R2[0], atol=1e-12, rtol=0)


def test_facet_term_with_batched_parameter_and_geometry():
    mesh = _mesh(2)
    basis = fe.Basis(mesh, fe.ElementTriP2())
    fb = fe.FacetBasis(mesh, basis.elem, facets=mesh.boundaries["right"])

    def flux(u, v, w):
        return w.alpha * dot(grad(u), w.n) * v * w.h + w.x[1] * u * v

    problem = Problem(basis, laplace, facets={"right": flux})
    alpha = torch.tensor([0.5, 2.0, -1.0], dtype=F64)
    u = torch.tensor(np.random.default_rng(1).standard_normal(basis.N))
    R = problem.residual(u, {"alpha": alpha})
    assert R.shape == (3, basis.N)
    for b in range(3):
        a = float(alpha[b])
        A = fe.asm(fe.BilinearForm(laplace), basis) + fe.asm(
            fe.BilinearForm(lambda u, v, w: a * dot(grad(u), w.n) * v * w.h + w.x[1] * u * v), fb)
        np.testing.assert_allclose(R[b].numpy(), A @ u.numpy(), atol=1e-11)


def test_facet_gradcheck_in_u_and_parameter():
    mesh = fe.MeshTri().refined(1).with_boundaries({"right": lambda x: np.isclose(x[0], 1.0)})
    basis = fe.Basis(mesh, fe.ElementTriP1())

    def nonlinear(u, v, w):
        return w.alpha * (u ** 3) * v + dot(grad(u), w.n) * v * u

    problem = Problem(basis, laplace, facets={"right": nonlinear})
    u = torch.randn(2, basis.N, dtype=F64, requires_grad=True)
    alpha = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, a: problem.residual(u, {"alpha": a}), (u, alpha))


def test_facet_term_and_boundary_integral_on_a_mixed_space():
    from femoe import boundary_integral

    mesh = _mesh(2)
    elem = fe.ElementComposite(fe.ElementVector(fe.ElementTriP2()), fe.ElementTriP1())
    basis = fe.Basis(mesh, elem)

    def stokes(u, p, v, q, w):
        return (grad(u) * grad(v)).sum((0, 1)) - (grad(v)[0, 0] + grad(v)[1, 1]) * p - q * (grad(u)[0, 0] + grad(u)[1, 1])

    def outflow(u, p, v, q, w):  # the traction sigma n = grad(u) n - p n tested with v
        return -dot(mul(grad(u), w.n), v) + p * dot(v, w.n) + 0.5 * dot(u, w.n) * q * w.x[1]

    fb = fe.FacetBasis(mesh, elem, facets=mesh.boundaries["right"])
    A = (fe.asm(fe.BilinearForm(stokes), basis) + fe.asm(fe.BilinearForm(outflow), fb)).toarray()
    problem = Problem(basis, stokes, facets={"right": outflow}, fields=("u", "p"))
    rng = np.random.default_rng(3)
    for B in (1, 2, 3):
        U = rng.standard_normal((B, basis.N))
        R, J = problem.residual_and_jacobian(torch.tensor(U))
        np.testing.assert_allclose(R.numpy(), U @ A.T, atol=1e-10)
        np.testing.assert_allclose(J.to_scipy(B - 1).toarray(), A, atol=1e-10)
        # the pressure force on the side, int p n_x ds, against scikit-fem's Functional
        got = boundary_integral(problem, torch.tensor(U), "right", lambda u, p, w: p * w.n[0] + dot(u, w.n))
        for b in range(B):
            zu, zp = fb.interpolate(U[b])  # the composite facet basis: same quadrature as femoe's
            ref = fe.asm(fe.Functional(lambda w: w.p * w.n[0] + dot(w.u, w.n)), fb, p=zp, u=zu)
            assert abs(float(got[b]) - ref) < 1e-12
