r"""Darcy flow on an unstructured 2D domain with holes (the neural-operator benchmark of Li et
al., moved from the unit-square grid to a real mesh).

PDE
---
.. math::

    -\nabla\cdot(\kappa \nabla u) = f \quad \text{in } \Omega, \qquad
    u = 0 \text{ on } \Gamma_\text{outer}, \qquad
    \kappa \nabla u \cdot n = 0 \text{ on the holes},

on ``Omega = [0, 2] x [0, 1]`` minus two disks of radius 0.2 centred at (0.5, 0.5) and (1.5, 0.5)
(``meshes/plate_with_holes.msh``: 2477 nodes, 4670 triangles; boundary tags ``"outer"``,
``"hole_1"``, ``"hole_2"``), with ``f = 1``.

Weak form (P1)
--------------
Find ``u`` with ``u = 0`` on ``"outer"`` such that ``int kappa grad u . grad v dx = int f v dx`` for
all ``v`` vanishing on ``"outer"``; the zero-flux hole condition is natural (no term).

Inputs
------
``kappa`` is a nodal P1 field drawn per sample from a Gaussian random field ``g`` (squared-
exponential covariance, length scale ``length = 0.15``, unit variance, random Fourier features):

* ``field="lognormal"`` (default): ``kappa = exp(sigma * g)`` with ``sigma = 1``;
* ``field="two_phase"``: ``kappa = kappa_high`` where ``g > 0`` and ``kappa_low`` elsewhere
  (12 and 3, the values of Li et al.'s Darcy data; the jump is smeared over one element by the
  P1 interpolation).

Provenance: Li et al., "Fourier neural operator for parametric PDEs" (ICLR 2021) Darcy flow,
on femoe's bundled unstructured mesh instead of a 421 x 421 grid.

Reference
---------
One Newton step of :func:`femoe.reference.solve` (the problem is linear; SuperLU).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import skfem as fe

from femoe.helpers import dot, grad
from femoe.mesh import read_mesh
from femoe.meshes import MESH_DIR
from femoe.problem import Problem
from femoe.problems._base import Param, ProblemSpec, positive
from femoe.problems.diffusion_sorption_1d import random_fourier_field
from femoe.reference import solve

log = logging.getLogger(__name__)

_FIELDS = ("lognormal", "two_phase")


class Darcy2D(ProblemSpec):
    """Darcy flow with a random permeability on the plate with two holes."""

    name = "darcy_2d"
    steady = True
    element = "ElementTriP1"
    mesh_file = "meshes/plate_with_holes.msh"
    description = "-div(kappa grad u) = f, random kappa, u = 0 on the outer boundary, no flux on holes"
    input_range = (positive, "> 0 (a permeability)")
    params = {
        "f": Param(1.0, lambda x: np.isfinite(x), "finite", "source term"),
        "field": Param("lognormal", lambda s: s in _FIELDS, f"one of {_FIELDS}", "", str),
        "length": Param(0.15, positive, "> 0", "GRF length scale"),
        "sigma": Param(1.0, positive, "> 0", "log-normal: std of log kappa"),
        "kappa_low": Param(3.0, positive, "> 0", "two-phase: low permeability"),
        "kappa_high": Param(12.0, positive, "> 0", "two-phase: high permeability"),
        "mesh": Param("", None, "", "mesh file with an 'outer' boundary tag (default: bundled)", str),
    }

    def _build(self, params: dict[str, Any]) -> Problem:
        mesh = read_mesh(params["mesh"] or str(MESH_DIR / "plate_with_holes.msh"))
        basis = fe.Basis(mesh, fe.ElementTriP1())
        f = params["f"]

        def darcy(u, v, w):
            return w.kappa * dot(grad(u), grad(v)) - f * v

        return Problem(basis, darcy, dirichlet={"outer": 0.0}, coefficients={"kappa": "nodal"},
                       defaults={"kappa": np.ones(basis.N)}, name=self.name)

    def sample_inputs(self, rng: np.random.Generator, n: int, problem: Problem | None = None) -> np.ndarray:
        """``n`` permeability fields on the P1 nodes, shape ``(n, n_nodes)``."""
        problem = problem if problem is not None else self.build()
        p = problem.config
        g = random_fourier_field(rng, n, problem.doflocs, p["length"])
        if p["field"] == "lognormal":
            return np.exp(p["sigma"] * g)
        return np.where(g > 0, p["kappa_high"], p["kappa_low"])

    def reference(self, problem: Problem, sample: np.ndarray) -> tuple[None, np.ndarray]:
        u, info = solve(problem, {"kappa": np.asarray(sample, dtype=float)})
        problem.last_reference_info = {"newton_iterations": info.iterations, "seconds": info.seconds}
        return None, u

    def output_fields(self, problem: Problem, u: np.ndarray) -> dict[str, np.ndarray]:
        return {"u": np.asarray(u)}


SPEC = Darcy2D()
