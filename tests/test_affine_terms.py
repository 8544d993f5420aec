"""Integrands affine in u with a derivative the mesh fixes (a diffusion, a mass, an outflow, a
constant load) are assembled once, at their first Jacobian, and then evaluated as ``K u + r(0)``
(femoe.assembly.form.affine_parts, WeakForm._term). What is checked:

* which integrands are taken for affine, and that nothing that depends on a parameter, the time,
  a learnable tensor or a kink of u (clamp) is;
* that a warmed problem (its affine terms cached) gives the residual and Jacobian of a fresh one
  (every term evaluated from its integrand) at batch 1 and 2, on scalar P1 with a facet term,
  vector P1, a mixed two-field space, a trajectory and a patch union;
* that the cached path is differentiable in u (gradcheck in float64).
"""

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.assembly.form import is_affine
from femoe.helpers import ddot, dot, grad, sym_grad
from femoe.problem import Problem
from femoe.sparse import BatchedCSR

F64 = torch.float64
LEARNABLE = torch.tensor(2.0, dtype=F64, requires_grad=True)


def _square_p1(form, **kw):
    mesh = fe.MeshTri().refined(2).with_boundaries({"left": lambda x: np.isclose(x[0], 0.0),
                                                    "right": lambda x: np.isclose(x[0], 1.0)})
    return Problem(fe.Basis(mesh, fe.ElementTriP1()), form, **kw)


def _probe(pb, integrand=None, t=None):
    tb = pb._tb
    p = pb._params(None, "cpu", F64, batch=1)
    w = pb._form_params(tb, p, 1, "cpu", F64, t)
    u = torch.rand(1, pb.n, dtype=F64, generator=torch.Generator().manual_seed(0)) - 0.5
    return is_affine(integrand or pb.residual_integrand, tb, tb.jets(u), w)


@pytest.mark.parametrize("form,affine", [
    (lambda u, v, w: dot(grad(u), grad(v)), True),
    (lambda u, v, w: dot(grad(u), grad(v)) - v, True),  # a constant load: affine, not linear
    (lambda u, v, w: (1.0 + w.x[0]) * dot(grad(u), grad(v)) + 3.0 * u * v, True),  # geometry is fixed
    (lambda u, v, w: dot(grad(u), grad(v)) - w.f * v, False),  # a parameter
    (lambda u, v, w: w.f * dot(grad(u), grad(v)), False),
    (lambda u, v, w: dot((1 + u ** 2) * grad(u), grad(v)), False),  # nonlinear
    (lambda u, v, w: torch.clamp(u.value, min=0.0) * v, False),  # piecewise linear: a kink at 0
    (lambda u, v, w: torch.abs(u.value) * v + dot(grad(u), grad(v)), False),
    (lambda u, v, w: LEARNABLE * dot(grad(u), grad(v)), False),  # a learnable coefficient
    (lambda u, v, w: dot(grad(u), grad(v)) + LEARNABLE * v, False),  # ... in the load only
    # no autograd graph, not affine: a mask, a detached factor (the numerical check catches them)
    (lambda u, v, w: (u.value > 0).to(u.value.dtype) * u.value * v + dot(grad(u), grad(v)), False),
    (lambda u, v, w: u.value.detach() ** 2 * u.value * v, False),
    (lambda u, v, w: (2.0 if "f" in w else 1.0) * u * v, False),  # looks at all of w
])
def test_which_integrands_are_affine(form, affine):
    pb = _square_p1(form, dirichlet={"left": 0.0}, defaults={"f": 1.0})
    assert _probe(pb) is affine


def test_a_parameter_named_like_the_geometry_is_a_parameter():
    """``w.h`` is the element size unless a parameter ``h`` (a Robin coefficient, say) shadows it."""
    def build():
        return _square_p1(lambda u, v, w: dot(grad(u), grad(v)), facets={"right": lambda u, v, w: w.h * u * v},
                          dirichlet={"left": 0.0}, defaults={"h": 1.0})

    pb = build()
    u = torch.rand(2, pb.n, dtype=F64, generator=torch.Generator().manual_seed(0))
    pb.residual_and_jacobian(u)
    assert len(pb._affine) == 1  # the diffusion, not the Robin term
    h = torch.tensor([[5.0], [2.0]], dtype=F64)
    R, J = pb.residual_and_jacobian(u, {"h": h})
    R0, J0 = build().residual_and_jacobian(u, {"h": h})
    torch.testing.assert_close(R, R0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(J.values, J0.values, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(R, pb.residual_and_jacobian(u)[0])  # h = 5, 2 is not h = 1


def test_an_integrand_that_reads_the_time_is_not_affine():
    mesh = fe.MeshLine().refined(3)
    pb = Problem(fe.Basis(mesh, fe.ElementLineP1()), lambda u, v, w: (1 + w.t) * dot(grad(u), grad(v)),
                 storage="mass", theta=1.0)
    assert not _probe(pb, t=torch.zeros(1, dtype=F64))
    assert _probe(pb, pb.storage_integrand, t=torch.zeros(1, dtype=F64))  # the mass term is


def _scalar_with_facet():
    return _square_p1(lambda u, v, w: dot(grad(u), grad(v)) + u ** 3 * v - v,
                      facets={"right": lambda u, v, w: 2.0 * u * v}, dirichlet={"left": 0.5})


def _scalar_affine_parts():  # two affine integrands of three
    mesh = fe.MeshTri().refined(2).with_boundaries({"left": lambda x: np.isclose(x[0], 0.0),
                                                    "right": lambda x: np.isclose(x[0], 1.0)})
    return Problem(fe.Basis(mesh, fe.ElementTriP1()), lambda u, v, w: dot(grad(u), grad(v)) - v,
                   facets={"right": lambda u, v, w: 2.0 * u * v, "left": lambda u, v, w: u ** 2 * v})


def _vector():
    mesh = fe.MeshTri().refined(2).with_boundaries({"left": lambda x: np.isclose(x[0], 0.0)})
    return Problem(fe.Basis(mesh, fe.ElementVector(fe.ElementTriP1())),
                   lambda u, v, w: ddot(sym_grad(u), sym_grad(v)) + 0.3 * dot(u, v), dirichlet={"left": 0.0})


def _mixed():
    mesh = fe.MeshTri().refined(2).with_boundaries({"left": lambda x: np.isclose(x[0], 0.0)})
    basis = fe.Basis(mesh, fe.ElementComposite(fe.ElementTriP1(), fe.ElementTriP1()))
    return Problem(basis, lambda om, ps, v, q, w: dot(grad(om), grad(v)) + dot(grad(ps), grad(q)) - om * q,
                   fields=("om", "ps"), dirichlet={"left": {"ps": 0.0}})


@pytest.fixture
def uncached(monkeypatch):
    """``uncached(make)``: the problem ``make()`` with no term taken for affine, so that every
    term is evaluated from its integrand (the reference the cached terms must equal)."""
    import femoe.problem._form as form_module

    def make(build):
        with monkeypatch.context() as m:
            m.setattr(form_module, "affine_parts", lambda *a, **k: None)
            pb = build()
            pb.residual(torch.zeros(1, pb.n, dtype=F64))  # probed now, while affine_parts says no
            if pb.storage_integrand is not None:
                pb.trajectory_residual(torch.zeros(1, 1, pb.n, dtype=F64), torch.zeros(1, pb.n, dtype=F64), 0.1)
        assert not pb._affine
        return pb

    return make


@pytest.mark.parametrize("build,n_affine", [(_scalar_with_facet, 1), (_scalar_affine_parts, 2), (_vector, 1),
                                            (_mixed, 1)])
@pytest.mark.parametrize("batch", [1, 2])
def test_a_warmed_problem_equals_one_without_the_cache(build, n_affine, batch, uncached):
    warm = build()
    g = torch.Generator().manual_seed(batch)
    warm.residual_and_jacobian(torch.rand(batch, warm.n, dtype=F64, generator=g))  # probes, caches
    assert len(warm._affine) == n_affine
    ref = uncached(build)
    for _ in range(2):
        u = torch.rand(batch, warm.n, dtype=F64, generator=g) - 0.5
        R, J = warm.residual_and_jacobian(u)
        R0, J0 = ref.residual_and_jacobian(u)  # every term from its integrand
        torch.testing.assert_close(R, R0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(J.values, J0.values, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(warm.residual(u), ref.residual(u), rtol=1e-12, atol=1e-12)


def _vals(x):
    return x.values if isinstance(x, BatchedCSR) else x


@pytest.mark.parametrize("batch", [1, 2])
def test_a_warmed_trajectory_and_patch_union_equal_ones_without_the_cache(make_diffusion_sorption, batch, uncached):
    params = dict(n_cells=16, n_saved=4, substeps=8, theta=1.0)
    warm = make_diffusion_sorption(**params)
    g = torch.Generator().manual_seed(batch)
    U = torch.rand(batch, 4, warm.n, dtype=F64, generator=g)
    warm.trajectory_residual_and_jacobians(U, 5.0)
    assert len(warm._affine) == 2  # the diffusion and the outflow; the sorption storage is nonlinear
    U = torch.rand(batch, 4, warm.n, dtype=F64, generator=g)
    fresh = uncached(lambda: make_diffusion_sorption(**params))
    for a, b in zip(warm.trajectory_residual_and_jacobians(U, 5.0), fresh.trajectory_residual_and_jacobians(U, 5.0)):
        torch.testing.assert_close(_vals(a), _vals(b), rtol=1e-12, atol=1e-12)
    cells = [np.arange(0, 9), np.arange(7, 16)]  # overlapping patches
    uw, uf = warm.restrict(cells), uncached(lambda: fresh.restrict(cells))
    V = torch.rand(batch, 4, uw.n, dtype=F64, generator=g)
    uw.trajectory_residual_and_jacobians(V, 5.0)
    assert len(uw._affine) == 2
    for a, b in zip(uw.trajectory_residual_and_jacobians(V + 0.1, 5.0), uf.trajectory_residual_and_jacobians(V + 0.1, 5.0)):
        torch.testing.assert_close(_vals(a), _vals(b), rtol=1e-12, atol=1e-12)


def test_the_cached_path_is_differentiable(uncached):
    pb = _scalar_affine_parts()
    pb.residual_and_jacobian(torch.zeros(1, pb.n, dtype=F64))
    assert len(pb._affine) == 2
    u = (torch.rand(2, pb.n, dtype=F64, generator=torch.Generator().manual_seed(3)) - 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: pb.residual(x), (u,))
    # the autograd Jacobian of the cached residual is the Jacobian of every term from its integrand
    _, J = uncached(_scalar_affine_parts).residual_and_jacobian(u.detach()[:1])
    dense = torch.autograd.functional.jacobian(lambda x: pb.residual(x[None])[0], u.detach()[0])
    rows = torch.as_tensor(pb.pattern.rows)
    cols = torch.as_tensor(pb.pattern.indices)
    torch.testing.assert_close(dense[rows, cols], J.values[0], rtol=1e-12, atol=1e-12)
