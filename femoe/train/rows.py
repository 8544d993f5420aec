"""Row weights of basis mode (and of every method's physics loss).

The constraint layers least-squares the residual rows ``s_i R_i(u)``; the weights ``s`` decide
which rows a basis that cannot satisfy all of them gives up. Two choices (``solver.row_weights``):

``"mass"`` (the landed default, :meth:`Problem.row_scale`)
    ``s_i = 1 / M_ii``: weak-form rows become pointwise residuals, independent of the element
    size. A row that also carries a boundary-facet term (Robin/outflow ``u v`` on a facet) then
    weighs its boundary condition by ``1 / M_ii ~ 1 / h``: on the 128-cell diffusion-sorption mesh
    the outflow row at ``x = 1`` counts 384 times its boundary residual.
``"boundary"``
    ``s_i = 1 / (M_ii + F_ii)`` with ``F_ii = int_facets phi_i^2 ds`` the boundary measure of
    row ``i``: interior rows are unchanged, a facet row becomes (to ``O(h)``) its boundary
    condition with weight ``O(1)``, like a Dirichlet row, on every mesh.

Dirichlet rows ``u_i - g_i`` get ``solver.dirichlet_weight`` (1 by default) under both choices.
"""

from __future__ import annotations

import numpy as np


def facet_mass_diagonal(problem) -> np.ndarray:
    """``F_ii = int phi_i^2 ds`` over the facets of the problem's facet terms (0 elsewhere)."""
    import skfem as fe

    diag = np.zeros(problem.n)
    for ft in getattr(problem, "_facets", []):
        fb = ft.tb.basis
        try:
            F = fe.BilinearForm(lambda u, v, w: u * v).assemble(fb)
        except Exception:  # vector elements
            F = fe.BilinearForm(lambda u, v, w: fe.helpers.dot(u, v)).assemble(fb)
        diag += np.asarray(F.diagonal()).ravel()[: problem.n]
    return diag


def row_weights(problem, kind: str = "mass", dirichlet_weight: float = 1.0) -> np.ndarray:
    """Weights ``s`` of the ``n`` residual rows (see the module docstring)."""
    if kind == "mass":
        s = np.array(problem.row_scale(), dtype=float)
    elif kind == "boundary":
        d = problem.mass_diagonal + facet_mass_diagonal(problem)
        s = 1.0 / np.where(d > 0, d, 1.0)
    else:
        raise ValueError(f"row weights must be 'mass' or 'boundary'; got {kind!r}")
    s[np.asarray(problem.dirichlet_dofs)] = dirichlet_weight
    return s
