"""The reference solves stay what they were: values pinned before the Newton loops were merged.

``tests/data/reference_pins.npz`` holds solutions computed with the code of commit 0d4274f (the
reference Newton of ``femoe/reference/newton.py`` before it became a front end over the shared
loop): the ``darcy_2d`` and ``diffusion_sorption_1d`` data generators' references, the steady
reference solve of a nonlinear problem (several Newton steps, line search) and a transient
reference march (``solve_transient``). The tables in docs/results.md were computed from such
references, so any change beyond round-off would invalidate them. ``python
tests/test_reference_pins.py`` rewrites the file (only ever from a commit whose references are
trusted).
"""

from pathlib import Path

import numpy as np
import pytest
import skfem as fe

from femoe.helpers import dot, grad
from femoe.problem import Problem
from femoe.problems import get_problem
from femoe.reference import solve, solve_transient

PINS = Path(__file__).parent / "data" / "reference_pins.npz"
DS_PARAMS = {"n_cells": 32, "T": 20.0, "n_saved": 5, "substeps": 8, "grading": 2}
RTOL = 1e-10


def _nonlinear_square() -> Problem:
    mesh = fe.MeshTri().refined(3).with_defaults()
    return Problem(fe.Basis(mesh, fe.ElementTriP1()),
                   lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - w.f * v,
                   dirichlet={"left": 0.0, "right": 0.0}, defaults={"f": 1.0})


def _nonlinear_heat() -> Problem:
    mesh = fe.MeshLine().refined(5).with_boundaries({"left": lambda x: np.isclose(x[0], 0.0)})
    return Problem(fe.Basis(mesh, fe.ElementLineP1()),
                   lambda u, v, w: w.D * dot((1 + u**2) * grad(u), grad(v)) + u**3 * v, storage="mass", theta=0.5,
                   dirichlet={"left": 1.0}, defaults={"D": 0.05})


def compute() -> dict[str, np.ndarray]:
    """Every pinned array, from the code as it is now."""
    out = {}
    spec = get_problem("darcy_2d")
    pb = spec.build()
    X = spec.sample_inputs(np.random.default_rng(0), 2, pb)
    out["darcy_u"] = np.stack([spec.reference(pb, x)[1] for x in X])
    spec = get_problem("diffusion_sorption_1d")
    pb = spec.build(**DS_PARAMS)
    X = spec.sample_inputs(np.random.default_rng(1), 2, pb)
    out["ds_U"] = np.stack([spec.reference(pb, x)[1] for x in X])
    pb = _nonlinear_square()
    u, info = solve(pb, {"f": 40.0})
    out["square_u"], out["square_norms"] = u, np.asarray(info.residual_norms)
    pb = _nonlinear_heat()
    x = pb.doflocs[0]
    _, U, infos = solve_transient(pb, np.sin(np.pi * x), 0.05, 4, {"D": 0.05})
    out["heat_U"], out["heat_iterations"] = U, np.asarray([i.iterations for i in infos])
    return out


@pytest.fixture(scope="module")
def now() -> dict[str, np.ndarray]:
    return compute()


@pytest.mark.parametrize("key", ["darcy_u", "ds_U", "square_u", "heat_U"])
def test_reference_solutions_unchanged(now, key):
    pinned = np.load(PINS)[key]
    assert now[key].shape == pinned.shape
    err = np.linalg.norm(now[key] - pinned) / np.linalg.norm(pinned)
    assert err <= RTOL, f"{key}: relative change {err:.2e}"


def test_reference_newton_path_unchanged(now):
    pinned = np.load(PINS)
    # the same number of Newton steps, and the same residual history to round-off
    np.testing.assert_array_equal(now["heat_iterations"], pinned["heat_iterations"])
    assert now["square_norms"].shape == pinned["square_norms"].shape
    np.testing.assert_allclose(now["square_norms"][:-1], pinned["square_norms"][:-1], rtol=1e-8)
    assert now["square_norms"][-1] <= 1e-10 * pinned["square_norms"][0]


if __name__ == "__main__":
    np.savez_compressed(PINS, **compute())
    print(f"wrote {PINS}")
