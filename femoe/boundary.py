"""Boundary quantities: integrals over tagged facets and reaction forces from the residual.

Two ways to measure what happens on a boundary ``S`` (a tag of the mesh):

* :func:`boundary_integral` integrates a pointwise expression of the solution over the facets
  of ``S``: a flux ``int_S grad(u).n ds``, a mean pressure, the surface formulation of a force.
  Written like a form without a test function: ``lambda u, w: dot(grad(u), w.n)`` (mixed
  spaces: ``lambda u, p, w: ...``).
* :func:`reaction` evaluates the weak-form residual in the Dirichlet rows of ``S``: with
  ``e`` the DOF vector that is 1 on the DOFs of one component on ``S`` and 0 elsewhere,
  ``r = R(u) . e``. At a discrete solution every row without a Dirichlet condition vanishes,
  so ``R(u) . e = R(u) . e_h`` for *any* finite-element function ``e_h`` that equals ``e`` on
  ``S`` (this is the *volume formulation* of drag and lift: no normal derivatives on a
  polygonal boundary, and the same convergence order as the energy of the solution). For a
  residual ``int sigma(u) : grad(v) - f . v dx`` integration by parts gives
  ``r = int_S (sigma n) . e ds`` with ``n`` the outward normal of the domain: the force that
  the boundary exerts on the material of the domain (for Poisson, the flux
  ``int_S grad(u) . n ds``). The fluid's force on an obstacle is therefore ``-r`` (see
  docs/mixed-spaces.md).

Both are differentiable with respect to ``u`` and the parameters and take a leading batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from skfem import FacetBasis

from femoe.assembly.torch_basis import TorchBasis
from femoe.errors import FieldError, ProblemError
from femoe.problem import Problem

__all__ = ["boundary_integral", "reaction", "reaction_dofs"]


def _facet_basis(problem: Problem, tag: str) -> TorchBasis:
    cache = problem.__dict__.setdefault("_boundary_tbs", {})
    if tag not in cache:
        facets = problem._boundary(tag)
        if len(facets) == 0:
            raise ProblemError(f"boundary tag {tag!r} holds no facets")
        cache[tag] = TorchBasis(FacetBasis(problem.mesh, problem.basis.elem, facets=facets))
    return cache[tag]


def boundary_integral(problem: Problem, u: torch.Tensor, tag: str, integrand: Callable[..., Any],
                      params: Mapping[str, Any] | None = None, *, t: float | None = None) -> torch.Tensor:
    """``int_S integrand(u, w) ds`` over the facets of boundary ``tag``.

    Parameters
    ----------
    problem
        The :class:`~femoe.Problem` whose basis ``u`` lives on.
    u
        DOF vectors ``(B, n)`` or ``(n,)``.
    tag
        A boundary tag of the mesh.
    integrand
        ``f(u, w)`` (one field per field of the space, then ``w``), pointwise values at the
        facet quadrature points; ``w`` has ``n`` (outward unit normal), ``x``, ``h`` and the
        parameters, as in a facet form.
    params, t
        Parameters and time, as for :meth:`~femoe.Problem.residual`.

    Returns
    -------
    torch.Tensor
        ``(B,)`` or ``()`` when ``u`` had no batch.
    """
    tb = _facet_basis(problem, tag)
    ub, p, squeeze = problem._prepare(u, params)
    w = problem._form_params(tb, p, ub.shape[0], ub.device, ub.dtype, t)
    fields = tb.fields(tb.jets(ub))
    val = integrand(*fields, w)
    if not isinstance(val, torch.Tensor):
        raise ProblemError(f"boundary integrand returned {type(val).__name__}; return a torch tensor")
    dx = tb.tensors(ub.device, ub.dtype)["dx"]
    try:
        val = torch.broadcast_to(val, (1, ub.shape[0], *dx.shape))
    except RuntimeError:
        raise ProblemError(f"boundary integrand returned shape {tuple(val.shape)}; it must give one number per "
                           "quadrature point (contract vectors with dot())") from None
    out = (val[0] * dx).sum((-2, -1))
    return out[0] if squeeze else out


def reaction_dofs(problem: Problem, tag: str, component: str) -> np.ndarray:
    """The DOFs of ``component`` (a scalar field or a component like ``"u_x"``) on boundary
    ``tag``: where the test vector of :func:`reaction` is 1."""
    vector = problem.components.get(component)
    if vector:
        raise FieldError(f"{component!r} is a vector field; name one component, one of {vector}")
    on_tag = np.asarray(problem.basis.get_dofs(problem._boundary(tag)).all(), dtype=np.int64)
    dofs = np.intersect1d(on_tag, problem.field_dofs(component))
    if dofs.size == 0:
        raise ProblemError(f"boundary {tag!r} holds no DOFs of {component!r}")
    return dofs


def reaction(problem: Problem, u: torch.Tensor, tag: str, component: str | None = None,
             params: Mapping[str, Any] | None = None, *, t: float | None = None) -> torch.Tensor:
    """Reaction on boundary ``tag``: ``R(u) . e`` with ``e`` 1 on the DOFs of ``component`` on
    the tag (the volume formulation of boundary forces; see the module docstring).

    Parameters
    ----------
    component
        A scalar field (``"p"``, or ``"u"`` on a scalar space) or one component of a vector
        field (``"u_x"``); ``None`` on a scalar single-field space. A vector field name gives
        all its components: the result then has a last axis of length ``ncomp``.

    Returns
    -------
    torch.Tensor
        ``(B,)`` (``(B, ncomp)`` for a vector field), without the batch axis when ``u`` had
        none. Differentiable in ``u`` and the parameters.
    """
    if component is None:
        if len(problem.fields) != 1 or problem.components[problem.fields[0]]:
            raise FieldError(f"name the component whose reaction you want, one of "
                             f"{[c for f in problem.fields for c in (problem.components[f] or (f,))]}")
        component = problem.fields[0]
    vector = problem.components.get(component)  # the components of a vector field, else ()/None
    R = problem.weak_residual(u, params, t=t)
    out = [R[..., torch.as_tensor(reaction_dofs(problem, tag, c), device=R.device)].sum(-1)
           for c in (vector or (component,))]
    return torch.stack(out, -1) if vector else out[0]
