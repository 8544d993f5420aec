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

``"energy"`` (steady problems)
    ``r -> L^{-1} r`` with ``K0 = L L^T`` the problem's Jacobian at ``u = 0``, every parameter at
    its default (1 where it has none), Dirichlet rows and columns replaced by the identity and
    symmetrised: ``||L^{-1} R||^2 = R^T K0^{-1} R``, the residual in the dual (energy) norm. For a
    linear diffusion problem with ``K0`` its own stiffness this is the error ``||u - u*||^2_K``:
    the least-squares member of span(B) is then the Ritz (energy-best) one, and a physics loss
    in these rows is the energy error, not the strong residual, which weighs an error mode by
    the square of its eigenvalue. With another coefficient (Darcy's kappa = 1 here) it is that
    error in an equivalent norm. ``K0`` must be symmetric positive definite (diffusion-type
    problems); its Cholesky factor is dense (``n <= ENERGY_MAX_N``).
``"energy_sample"`` (steady problems)
    The same with each sample's own Jacobian at ``u = 0`` (its parameters: Darcy's kappa), so
    that for a linear problem the rows are exactly that sample's energy error; one dense
    Cholesky factor per sample and training step.

Dirichlet rows ``u_i - g_i`` get ``solver.dirichlet_weight`` (1 by default) under every choice.
"""

from __future__ import annotations

import numpy as np

from femoe.errors import ConfigError


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


#: Largest problem (DOFs) for which ``"energy"`` rows are built (a dense ``n x n`` factor)
ENERGY_MAX_N = 8000


def _unit_params(problem) -> dict:
    """Every declared coefficient at its default, or 1 (constant or one per DOF / element)."""
    import torch

    out = {}
    for name, kind in problem.coefficients.items():
        if name in problem.defaults:
            continue
        if kind == "constant":
            out[name] = torch.ones((), dtype=torch.float64)
        elif kind == "nodal":
            out[name] = torch.ones(problem.n, dtype=torch.float64)
        elif kind == "element":
            out[name] = torch.ones(problem.mesh.t.shape[1], dtype=torch.float64)
        else:
            raise ConfigError(f"energy rows: parameter {name!r} of kind {kind!r} has no default to build the "
                              "reference operator with; give it a default or use row_weights 'mass' or 'boundary'")
    return out


def energy_rows(problem, dirichlet_weight: float = 1.0, per_sample: bool = False):
    """The ``"energy"`` row transform of a steady problem (see the module docstring); with
    ``per_sample`` (``"energy_sample"``) each sample's own operator (its parameters) instead of
    the reference one, factorised per sample (:class:`femoe.layers.SampleEnergyRows`). Both
    factorise with :func:`femoe.layers.energy_factor`. The mixture of experts applies them per
    expert (:class:`femoe.layers.BlockEnergyRows`)."""
    from femoe.errors import ProblemError
    from femoe.layers import EnergyRows, SampleEnergyRows

    kind = "energy_sample" if per_sample else "energy"
    if problem.is_time_dependent:
        raise ConfigError(f"solver.row_weights = {kind!r} applies to steady problems; a trajectory's rows take "
                          "'mass' or 'boundary'")
    n = problem.n
    if n > ENERGY_MAX_N:
        raise ConfigError(f"solver.row_weights = {kind!r} builds a dense {n} x {n} factor; at most {ENERGY_MAX_N} "
                          "DOFs are supported: use 'mass' or 'boundary'")
    s = np.ones(n)
    s[np.asarray(problem.dirichlet_dofs)] = dirichlet_weight
    if per_sample:
        return SampleEnergyRows(problem, s)
    try:
        return EnergyRows(problem, _unit_params(problem), s)
    except ProblemError as exc:
        raise ConfigError(f"solver.row_weights = 'energy' (parameters at their defaults, 1 where none): {exc}; "
                          "use 'mass' or 'boundary'") from None


def row_weights(problem, kind: str = "mass", dirichlet_weight: float = 1.0) -> np.ndarray:
    """Weights ``s`` of the ``n`` residual rows (see the module docstring)."""
    if kind == "mass":
        s = np.array(problem.row_scale(), dtype=float)
    elif kind == "boundary":
        d = problem.mass_diagonal + facet_mass_diagonal(problem)
        s = 1.0 / np.where(d > 0, d, 1.0)
    else:
        raise ValueError(f"row weights must be 'mass' or 'boundary' (or 'energy': energy_rows); got {kind!r}")
    s[np.asarray(problem.dirichlet_dofs)] = dirichlet_weight
    return s
