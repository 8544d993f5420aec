r"""Poisson with a manufactured solution, linear or nonlinear, for tests.

PDE
---
On the unit square (scikit-fem's ``MeshTri`` refined ``refine`` times, boundary tag
``"boundary"``), with the exact solution ``u* = a sin(pi x) sin(pi y)``:

* ``nonlinear=False``: ``-lap u = f``, ``f = 2 pi^2 u*``;
* ``nonlinear=True``: ``-div((1 + u^2) grad u) = f``,
  ``f = (1 + u*^2) 2 pi^2 u* - 2 u* |grad u*|^2``;

``u = 0`` on the boundary. The amplitude ``a`` is the per-sample input (uniform in
``[0.5, 2]``), so the nonlinear variant is more nonlinear for larger samples.

Weak form (P1 or P2 by ``order``)
---------------------------------
``int k(u) grad u . grad v - f v dx = 0`` with ``k(u) = 1`` or ``1 + u^2``; ``f`` is evaluated at the
quadrature points from ``w.x``. The discretisation error in L2 falls as ``h^(order + 1)``
(tested).

Reference: :func:`femoe.reference.solve` (Newton).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import skfem as fe

from femoe.helpers import dot, grad, sin, cos
from femoe.problem import Problem
from femoe.problems._base import Param, ProblemSpec
from femoe.reference import solve

_PI = np.pi


def exact(x: np.ndarray, amplitude: float) -> np.ndarray:
    """``u*(x) = a sin(pi x) sin(pi y)`` at points ``(2, ...)``."""
    return amplitude * np.sin(_PI * x[0]) * np.sin(_PI * x[1])


def _flag(v: Any) -> bool:
    """A boolean parameter: true/false (also 1/0, yes/no as given on the command line); anything
    else is refused rather than read as false."""
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word in ("1", "true", "yes"):
        return True
    if word in ("0", "false", "no"):
        return False
    raise ValueError(f"not a boolean: {v!r}")


class PoissonMMS(ProblemSpec):
    """Manufactured-solution Poisson problem (see the module docstring)."""

    name = "poisson_mms"
    steady = True
    element = "ElementTriP1"
    mesh_file = None  # skfem.MeshTri().refined(refine), tag "boundary"
    input_param = "amplitude"
    description = "manufactured u = a sin(pi x) sin(pi y); -lap u = f or -div((1+u^2) grad u) = f"
    params = {
        "refine": Param(4, lambda n: int(n) == n and 0 <= n <= 9, "an integer in [0, 9]", "", int),
        "order": Param(1, lambda n: n in (1, 2), "1 or 2", "polynomial degree", int),
        "nonlinear": Param(False, None, "", "use k(u) = 1 + u^2", _flag),
    }

    def _build(self, params: dict[str, Any]) -> Problem:
        mesh = fe.MeshTri().refined(params["refine"]).with_boundaries(
            {"boundary": lambda x: np.isclose(x[0], 0) | np.isclose(x[0], 1) | np.isclose(x[1], 0)
             | np.isclose(x[1], 1)})
        element = fe.ElementTriP1() if params["order"] == 1 else fe.ElementTriP2()
        basis = fe.Basis(mesh, element)
        nonlinear = params["nonlinear"]

        def mms(u, v, w):
            a = w.amplitude
            x, y = w.x[0], w.x[1]
            us = a * sin(_PI * x) * sin(_PI * y)
            if nonlinear:
                gx = a * _PI * cos(_PI * x) * sin(_PI * y)
                gy = a * _PI * sin(_PI * x) * cos(_PI * y)
                f = (1 + us**2) * 2 * _PI**2 * us - 2 * us * (gx**2 + gy**2)
                k = 1 + u**2
            else:
                f = 2 * _PI**2 * us
                k = 1.0
            return k * dot(grad(u), grad(v)) - f * v

        return Problem(basis, mms, dirichlet={"boundary": 0.0}, defaults={"amplitude": 1.0},
                       coefficients={"amplitude": "constant"}, name=self.name)

    def sample_inputs(self, rng: np.random.Generator, n: int, problem: Problem | None = None) -> np.ndarray:
        """``n`` amplitudes, shape ``(n, 1)``."""
        return rng.uniform(0.5, 2.0, size=(n, 1))

    def reference(self, problem: Problem, sample: np.ndarray) -> tuple[None, np.ndarray]:
        u, info = solve(problem, {"amplitude": float(np.asarray(sample).ravel()[0])})
        problem.last_reference_info = {"newton_iterations": info.iterations, "seconds": info.seconds}
        return None, u

    def output_fields(self, problem: Problem, u: np.ndarray) -> dict[str, np.ndarray]:
        return {"u": np.asarray(u)[..., : problem.mesh.nvertices]}


SPEC = PoissonMMS()
