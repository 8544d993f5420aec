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


CASES = {
    "1d-theta1": lambda: (_sorption_1d(1.0), {}),
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
    model = TrajectoryResidual(problem, dt=0.1, **kw)
    n_l = model.n_local
    u = 0.5 + 0.3 * torch.rand(batch, T + 1, n_l, dtype=F64, generator=gen)
    p = {INITIAL: torch.rand(batch, n, dtype=F64, generator=gen)}
    rbar = torch.randn(batch, model.residual(u, p).shape[1], dtype=F64, generator=gen)
    H = model.hessian_matrix(u, p, rbar)
    H_ref = SteadyResidual.hessian_matrix(model, u, p, rbar)
    assert H.batch_size == H_ref.batch_size == batch * (T + 1)
    scale = float(H_ref.values.abs().max())
    assert scale > 1e-3  # the rows are nonlinear: there is a second-order term to compare
    torch.testing.assert_close(H.values, H_ref.values, rtol=0, atol=1e-13 * scale)


def test_linear_rows_have_no_trajectory_hessian():
    mesh = fe.MeshLine().refined(3)
    problem = Problem(fe.Basis(mesh, fe.ElementLineP1()), lambda u, v, w: dot(grad(u), grad(v)), storage="mass")
    model = TrajectoryResidual(problem, dt=0.1, row_scale=None)
    u = torch.rand(2, 3, problem.n, dtype=F64)
    p = {INITIAL: torch.zeros(2, problem.n, dtype=F64)}
    problem.trajectory_residual_and_jacobians(u, 0.1)  # the affine terms are found and assembled once
    assert model.hessian_matrix(u, p, torch.ones(2, model.residual(u, p).shape[1], dtype=F64)) is None
