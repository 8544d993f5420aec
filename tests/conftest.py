"""Problems shared by several test files, as factory fixtures.

Each fixture returns a function that builds a new :class:`~femoe.problem.Problem` on every call,
so no two tests (nor two calls in one test) share one: a Problem keeps caches and warn-once
state (torch copies of its data, the parameter names it has warned about) that a test could
otherwise leak into the next one.

- ``make_square(form, refine, ...)``: P1 on the unit square ``MeshTri().refined(refine)`` with
  the tags "left", "right", "bottom", "top"; ``form`` is one of :data:`SQUARE_FORMS`.
- ``make_heat(form, refine, theta, dirichlet, ...)``: P1 on the unit interval
  ``MeshLine().refined(refine)`` with the tags "left" (x = 0) and "right" (x = 1), mass storage
  (``u_t`` + the given spatial integrand), the theta scheme.
- ``make_diffusion_sorption(**params)``: ``femoe.problems.diffusion_sorption_1d`` built with ``params``.
"""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import skfem as fe

from femoe.helpers import dot, grad
from femoe.problem import Problem

#: the steady integrands on the unit square, by name
SQUARE_FORMS: dict[str, Callable] = {
    # -lap u = f
    "poisson": lambda u, v, w: dot(grad(u), grad(v)) - w.f * v,
    # -lap u = 1 (no parameter)
    "unit_load": lambda u, v, w: dot(grad(u), grad(v)) - v,
    # -div((1 + u^2) grad u) = f
    "nonlinear": lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - w.f * v,
}
#: u = 0 on "left" and "right": the default of make_square
LEFT_RIGHT_ZERO = {"left": 0.0, "right": 0.0}


def _square(form: str, refine: int = 3, *, dirichlet: Mapping[str, Any] | str | None = LEFT_RIGHT_ZERO,
            facets: Mapping[str, Callable] | None = None, coefficients: Mapping[str, Any] | None = None,
            **defaults: Any) -> Problem:
    mesh = fe.MeshTri().refined(refine).with_defaults()
    if dirichlet == "all":  # u = 0 on the whole boundary
        dirichlet = {name: 0.0 for name in mesh.boundaries}
    elif dirichlet is not None:
        dirichlet = dict(dirichlet)  # a copy: the default is shared
    return Problem(fe.Basis(mesh, fe.ElementTriP1()), SQUARE_FORMS[form], facets=facets,
                   dirichlet=dirichlet, coefficients=coefficients, defaults=defaults)


def _heat(form: Callable, refine: int, *, theta: float, dirichlet: Mapping[str, Any],
          facets: Mapping[str, Callable] | None = None, **defaults: Any) -> Problem:
    mesh = fe.MeshLine().refined(refine).with_boundaries({"left": lambda x: np.isclose(x[0], 0.0),
                                                          "right": lambda x: np.isclose(x[0], 1.0)})
    return Problem(fe.Basis(mesh, fe.ElementLineP1()), form, facets=facets, storage="mass", theta=theta,
                   dirichlet=dirichlet, defaults=defaults)


def _diffusion_sorption(**params: Any) -> Problem:
    from femoe.problems.diffusion_sorption_1d import DiffusionSorption1D

    return DiffusionSorption1D().build(**params)


@pytest.fixture
def make_square() -> Callable[..., Problem]:
    """``make_square(form, refine=3, *, dirichlet=LEFT_RIGHT_ZERO, facets=None, coefficients=None,
    **defaults)``: a steady P1 problem on the unit square. ``form``: a key of
    :data:`SQUARE_FORMS`; ``dirichlet="all"``: u = 0 on the whole boundary, None: no Dirichlet
    rows; the keyword arguments left over are the parameter defaults (``f=1.0``)."""
    return _square


@pytest.fixture
def make_heat() -> Callable[..., Problem]:
    """``make_heat(form, refine, *, theta, dirichlet, facets=None, **defaults)``: ``u_t`` plus
    the spatial integrand ``form`` on the unit interval, P1 (``2**refine`` cells), theta
    scheme; the keyword arguments left over are the parameter defaults (``D=0.05``)."""
    return _heat


@pytest.fixture
def make_diffusion_sorption() -> Callable[..., Problem]:
    """``make_diffusion_sorption(**params)``: the registered diffusion-sorption problem
    (``femoe.problems.diffusion_sorption_1d``) built with ``params`` (``n_cells``, ``n_saved``, ...)."""
    return _diffusion_sorption
