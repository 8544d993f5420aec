"""Weak-form problems evaluated in torch: residual ``R(u; p)`` and its sparse Jacobian.

A :class:`Problem` holds a scikit-fem basis and the pieces of a weak form, written the way
scikit-fem users write them: a residual integrand ``f(u, v, w)`` (``f(u, p, v, q, w)`` on a
two-field space), optional facet integrands on tagged boundaries (Neumann/Robin terms),
scikit-fem ``BilinearForm``/``LinearForm`` objects as they are, Dirichlet data by boundary tag
name, parameters (coefficient fields and constants that may require grad), and for
time-dependent problems a storage integrand and the theta scheme

    R^t = (S(u^t) - S(u^{t-1})) / dt + theta A(u^t, t) + (1 - theta) A(u^{t-1}, t - dt).

Everything the forms need from scikit-fem (basis jets, quadrature weights, the element-to-DOF
map, the CSR sparsity pattern and where each local entry lands in it) is computed once;
each call is a gather, a few contractions and a scatter, in torch, on the device and in the
dtype of ``u``, for a leading batch of ``u`` and of the parameters.

Dirichlet rows: ``R_i = u_i - g_i`` for ``i`` in :attr:`Problem.dirichlet_dofs`, so the Jacobian
has unit rows there and the system stays square; :attr:`Problem.free_dofs` are the others.
:meth:`Problem.weak_residual` keeps the weak form in those rows too (reactions, see
:mod:`femoe.boundary`).

Vector and mixed spaces have named fields (``fields=("u", "p")``) and components (``"u_x"``);
Dirichlet data name the fields they fix, and a bare value on a space with several fields is an
error rather than a silent "fix everything" (docs/mixed-spaces.md). Parameter kinds are declared
or read from a shape that fits one kind only (:meth:`Problem.parameter_kind`).

The package is split by concern; each piece is an object the problem holds:

- ``_form``: :class:`WeakForm`, the evaluation (residual, Jacobian, steps, trajectories) that
  :class:`Problem` and :class:`PatchUnion` share;
- ``_pattern``: :class:`SparsityPattern`, the Jacobian's CSR pattern and where every local
  entry lands in it;
- ``_parameters``: :class:`ParameterKinds`, the declared kinds, defaults, kinds read from
  shapes, and the form a parameter takes in ``w`` (:class:`PatchParameters` for a union);
- ``_dirichlet``: :class:`DirichletData`, the entries as given and their values ``g``, and
  :class:`DirichletRows`, what Dirichlet rows do to the residual and the Jacobian;
- ``_scheme``: :class:`ThetaScheme`, the time scheme;
- ``_problem``: :class:`Problem`, which builds the pieces and owns the field table;
- ``_union``: :class:`PatchUnion`, the disjoint union of element patches, which holds its
  parent problem and its own pieces for the union's DOFs;
- ``_transfer``: :func:`interpolation_operator`, a field moved between the spaces of two
  meshes of one domain (periodic meshes included), and the point search under it.
"""

from femoe.problem._dirichlet import DirichletData, DirichletEntry, DirichletRows, DirichletValue
from femoe.problem._form import FacetTerm, Integrand, WeakForm
from femoe.problem._parameters import COEFF_KINDS, ParameterKinds, Params, PatchParameters
from femoe.problem._pattern import SparsityPattern
from femoe.problem._problem import Problem
from femoe.problem._scheme import ThetaScheme
from femoe.problem._transfer import find_cells, interpolation_operator, point_interpolation
from femoe.problem._union import PatchUnion

__all__ = [
    "COEFF_KINDS",
    "DirichletData",
    "DirichletEntry",
    "DirichletRows",
    "DirichletValue",
    "FacetTerm",
    "Integrand",
    "ParameterKinds",
    "Params",
    "PatchParameters",
    "PatchUnion",
    "Problem",
    "SparsityPattern",
    "ThetaScheme",
    "WeakForm",
    "find_cells",
    "interpolation_operator",
    "point_interpolation",
]
