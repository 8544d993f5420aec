"""The trajectory rows' second derivatives from the forms (``Problem.trajectory_hessian``, used by
``TrajectoryResidual.hessian_matrix``) against Hessian-vector products through the assembly (the
generic ``SteadyResidual.hessian_matrix``), on the configurations the rows come in."""

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.helpers import dot, grad
from femoe.layers._residuals import INITIAL, SteadyResidual, TimeIntegratedRows, TrajectoryResidual
from femoe.problem import Problem

F64 = torch.float64


def _sorption_1d(theta):
    """A nonlinear storage term (sorption), nonlinear diffusion and a nonlinear Robin facet term."""
    mesh = fe.MeshLine().refined(4).with_boundaries({"left": lambda x: np.isclose(x[0], 0.0),
                                                     "right": lambda x: np.isclose(x[0], 1.0)})
    return Problem(fe.Basis(mesh, fe.ElementLineP1()),
                   lambda u, v, w: dot((w.D + u ** 2) * grad(u), grad(v)),
                   facets={"right": lambda u, v, w: u ** 3 * v},
                   storage=lambda u, v, w: (u + 0.4 * (u * u + 0.1) ** 0.9) * v,
                   dirichlet={"left": 1.0}, theta=theta, defaults={"D": 0.05})


def _mixed_2d(theta):
    """Two fields on triangles (P1 x P1), mass storage, a nonlinear coupling (Navier-Stokes-like)."""
    mesh = fe.MeshTri().refined(2).with_defaults()

    def form(w_, p_, v, q, w):
        return (0.1 * dot(grad(w_), grad(v)) + (grad(p_)[0] * grad(w_)[1] - grad(p_)[1] * grad(w_)[0]) * v
                + dot(grad(p_), grad(q)) - w_ * q)

    return Problem(fe.Basis(mesh, fe.ElementTriP1() * fe.ElementTriP1()), form, storage="mass", theta=theta,
                   dirichlet={"left": {"u0": 0.0}})


def _explicit_time_dependent():
    """Theta 0, Dirichlet values g(x, t), a form reading the time and a per-sample nodal parameter."""
    mesh = fe.MeshLine().refined(4).with_boundaries({"left": lambda x: np.isclose(x[0], 0.0)})
    return Problem(fe.Basis(mesh, fe.ElementLineP1()),
                   lambda u, v, w: dot((w.kappa + u ** 2) * grad(u), grad(v)) + (1 + w.t) * u ** 3 * v,
                   storage=lambda u, v, w: (u + 0.3 * u ** 3) * v, theta=0.0,
                   dirichlet={"left": lambda x, t: 1.0 + t * x[0]}, coefficients={"kappa": "nodal"})


CASES = {
    "1d-theta1": lambda: (_sorption_1d(1.0), {}),
    "1d-theta0-time-sample-params": lambda: (_explicit_time_dependent(), {"kappa": True}),
    "1d-cn-rows-weights": lambda: (_sorption_1d(0.5), {"rows": "half", "row_scale": "mass"}),
    "1d-integrated-dofs": lambda: (_sorption_1d(0.5), {"integrated": True, "dofs": "interior"}),
    "2d-mixed": lambda: (_mixed_2d(0.5), {}),
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_trajectory_hessian_equals_hessian_vector_products_through_the_assembly(case, batch):
    problem, opts = CASES[case]()
    n, T = problem.n, 3
    gen = torch.Generator().manual_seed(0)
    kw = {"row_scale": None}
    if opts.get("rows") == "half":
        kw["rows"] = torch.arange(0, T * n, 2)
    if "row_scale" in opts:
        kw["row_scale"] = opts["row_scale"]
    if opts.get("integrated"):
        kw["row_scale"] = TimeIntegratedRows(np.ones(n))
    if opts.get("dofs") == "interior":
        kw["dofs"] = torch.arange(1, n)
    model = TrajectoryResidual(problem, dt=0.1, t0=0.2, **kw)
    n_l = model.n_local
    u = 0.5 + 0.3 * torch.rand(batch, T + 1, n_l, dtype=F64, generator=gen)
    p = {INITIAL: torch.rand(batch, n, dtype=F64, generator=gen)}
    if opts.get("kappa"):  # per sample
        p["kappa"] = 0.1 + torch.rand(batch, n, dtype=F64, generator=gen)
    rbar = torch.randn(batch, model.residual(u, p).shape[1], dtype=F64, generator=gen)
    H = model.hessian_matrix(u, p, rbar)
    H_ref = SteadyResidual.hessian_matrix(model, u, p, rbar)
    assert H.batch_size == H_ref.batch_size == batch * (T + 1)
    scale = float(H_ref.values.abs().max())
    assert scale > 1e-3  # the rows are nonlinear: there is a second-order term to compare
    torch.testing.assert_close(H.values, H_ref.values, rtol=0, atol=1e-13 * scale)


def test_terms_found_affine_or_free_of_u_have_no_local_hessian():
    """Only the nonlinear terms are differentiated twice: the diffusion and the facet term are
    assembled once (affine), a learnable flux held by a form's closure does not depend on ``u``
    (and needs a gradient); linear rows have no Hessian at all."""
    from unittest import mock

    import femoe.problem._form as form_module

    q = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))
    mesh = fe.MeshLine().refined(3).with_boundaries({"right": lambda x: np.isclose(x[0], 1.0)})
    basis = fe.Basis(mesh, fe.ElementLineP1())
    problem = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)), facets={"right": lambda u, v, w: q * v},
                      storage=lambda u, v, w: (u + 0.4 * u ** 3) * v)
    model = TrajectoryResidual(problem, dt=0.1, row_scale=None)
    u = torch.rand(2, 3, problem.n, dtype=F64)
    p = {INITIAL: torch.zeros(2, problem.n, dtype=F64)}
    problem.trajectory_residual_and_jacobians(u, 0.1)  # the affine terms are found and assembled once
    rbar = torch.randn(2, model.residual(u, p).shape[1], dtype=F64)
    with mock.patch.object(form_module, "local_hessian", wraps=form_module.local_hessian) as spy:
        H = model.hessian_matrix(u, p, rbar)
    assert spy.call_count == 2  # the storage term and the closure's flux; the diffusion is affine
    torch.testing.assert_close(H.values, SteadyResidual.hessian_matrix(model, u, p, rbar).values, rtol=0,
                               atol=1e-13 * float(H.values.abs().max()))
    linear = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)), storage="mass")
    lin_model = TrajectoryResidual(linear, dt=0.1, row_scale=None)
    assert lin_model.hessian_matrix(u, p, torch.ones(2, lin_model.residual(u, p).shape[1], dtype=F64)) is None


@pytest.mark.parametrize("global_rows", ["boundary+initial", "boundary"])
def test_experts_curvature_equals_hessian_vector_products(global_rows):
    """The experts' curvature (their union's trajectory Hessian, folded) equals the one from
    Hessian-vector products through the union's assembly."""
    from unittest import mock

    from femoe.experts import HardConstraintMoE
    from femoe.layers._residuals import basis_field

    problem = _sorption_1d(1.0)
    layer = HardConstraintMoE(problem, 3, partition="slab", dt=0.1, global_rows=global_rows)
    gen = torch.Generator().manual_seed(2)
    B = 0.2 * torch.randn(2, 4, problem.n, 3, dtype=F64, generator=gen)
    u0 = 0.5 + 0.2 * torch.rand(2, problem.n, dtype=F64, generator=gen)
    captured = {}
    import femoe.layers._lm as lm

    original = lm._lm

    def spy(model, Bf, p, o):
        captured.update(model=model, B=Bf, p=p)
        return original(model, Bf, p, o)

    with mock.patch.object(lm, "_lm", spy):
        layer(B, None, u0)
    model, Bf, p = captured["model"], captured["B"], captured["p"]
    w = 0.5 + torch.rand(Bf.shape[0], Bf.shape[-1], dtype=F64, generator=gen)
    u = basis_field(Bf, w)
    r = model.residual(u, p)
    S = model.curvature(u, Bf, p, r)
    with mock.patch.object(TrajectoryResidual, "hessian_matrix", SteadyResidual.hessian_matrix):
        S_ref = model.curvature(u, Bf, p, r)
    assert float(S_ref.abs().max()) > 1e-6
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-13 * float(S_ref.abs().max()))
