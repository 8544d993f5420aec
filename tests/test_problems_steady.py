"""Darcy 2D and the Poisson manufactured solutions."""

import numpy as np
import pytest
import torch

from femoe.problems import get_problem
from femoe.problems.poisson_mms import exact


def _l2_error(problem, u, amplitude):
    basis = problem.basis
    uh = np.asarray(basis.interpolate(u))
    x = np.asarray(basis.global_coordinates())
    err = (uh - exact(x, amplitude)) ** 2
    return float(np.sqrt((err * basis.dx).sum()))


@pytest.mark.parametrize("order,rate", [(1, 2.0), (2, 3.0)])
@pytest.mark.parametrize("nonlinear", [False, True])
def test_mms_converges_at_the_expected_rate(order, rate, nonlinear):
    spec = get_problem("poisson_mms")
    errors = []
    for refine in (2, 3, 4):
        problem = spec.build(refine=refine, order=order, nonlinear=nonlinear)
        _, u = spec.reference(problem, np.array([1.5]))
        errors.append(_l2_error(problem, u, 1.5))
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert abs(rates[-1] - rate) < 0.15, rates


def test_nonlinear_mms_needs_several_newton_steps_and_solves_the_residual():
    spec = get_problem("poisson_mms")
    problem = spec.build(refine=3, nonlinear=True)
    _, u = spec.reference(problem, np.array([2.0]))
    assert problem.last_reference_info["newton_iterations"] >= 3
    R = problem.residual(torch.tensor(u), {"amplitude": 2.0})
    assert np.abs(R.numpy()).max() < 1e-9


@pytest.mark.parametrize("field", ["lognormal", "two_phase"])
def test_darcy_reference_solves_the_weak_form(field):
    spec = get_problem("darcy_2d")
    problem = spec.build(field=field)
    kappa = spec.sample_inputs(np.random.default_rng(1), 1, problem)[0]
    assert kappa.shape == (problem.n,) and np.all(kappa > 0)
    if field == "two_phase":
        assert set(np.unique(kappa)) == {3.0, 12.0}
    _, u = spec.reference(problem, kappa)
    R = problem.residual(torch.tensor(u), {"kappa": torch.tensor(kappa)}).numpy()
    assert np.abs(R).max() < 1e-10
    outer = problem.basis.get_dofs(problem.mesh.boundaries["outer"]).all()
    assert np.all(u[outer] == 0.0)
    assert u.max() > 0.01  # f = 1 > 0: the solution is positive inside


def test_darcy_holes_are_zero_flux():
    # with kappa = 1 and f = 1 the flux through the outer boundary equals the source integral:
    # sum of the unconstrained FEM residual rows on the outer boundary = -|Omega| (holes carry none)
    spec = get_problem("darcy_2d")
    problem = spec.build()
    kappa = np.ones(problem.n)
    _, u = spec.reference(problem, kappa)
    import skfem as fe
    from skfem.helpers import dot, grad

    A = fe.BilinearForm(lambda u, v, w: dot(grad(u), grad(v))).assemble(problem.basis)
    b = fe.LinearForm(lambda v, w: 1.0 * v).assemble(problem.basis)
    r = A @ u - b
    outer = problem.basis.get_dofs(problem.mesh.boundaries["outer"]).all()
    area = 2.0 - 2 * np.pi * 0.2**2
    assert r[outer].sum() == pytest.approx(-area, rel=2e-3)  # polygonal holes: area to O(h^2)


def test_mms_accepts_the_inputs_femoe_run_passes_and_data_record_the_fields(tmp_path):
    # femoe run hands steady inputs over as (B, 1) tensors; this used to raise "cannot tell what
    # parameter 'amplitude' of shape (1, 1)"
    import h5py
    import json

    from femoe.data import generate

    spec = get_problem("poisson_mms")
    problem = spec.build(refine=2)
    u = torch.zeros(problem.n, dtype=torch.float64)
    R = problem.residual(u, {"amplitude": torch.tensor([[1.5]], dtype=torch.float64)})
    torch.testing.assert_close(R, problem.residual(u, {"amplitude": 1.5}))
    out = generate("poisson_mms", tmp_path / "d", 1, 1, seed=0, params={"refine": 2})
    with h5py.File(out["train"]) as f:
        assert json.loads(f.attrs["fields"]) == {"u": {"n_dofs": problem.n, "components": []}}
        assert int(f.attrs["n_dirichlet"]) == problem.dirichlet_dofs.size
