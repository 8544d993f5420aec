"""The weak-form problem of a PDE (:class:`Problem`): what it is built from, and its fields."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from skfem import BilinearForm, FacetBasis, LinearForm, asm

from femoe.assembly.spaces import FieldInfo, field_table
from femoe.assembly.torch_basis import TorchBasis
from femoe.errors import FieldError, ProblemError
from femoe.problem._dirichlet import DirichletData, DirichletRows, DirichletValue
from femoe.problem._form import FacetTerm, Integrand, WeakForm, boundary_facets, storage_integrand
from femoe.problem._parameters import ParameterKinds, Params
from femoe.problem._pattern import SparsityPattern
from femoe.problem._scheme import ThetaScheme
from femoe.problem._union import PatchUnion


class Problem(WeakForm):
    """A discrete weak-form problem on a scikit-fem basis, evaluated in torch.

    Parameters
    ----------
    basis
        scikit-fem ``CellBasis`` (scalar, vector, or two-field ``ElementComposite``).
    residual
        Integrand ``f(u, v, w)`` of the residual, linear in ``v``; write it with
        :mod:`femoe.helpers` (``grad``, ``dot``, ...) so it also runs inside scikit-fem.
        ``w`` holds ``x``, ``h``, ``t`` (time-dependent problems) and the parameters.
    facets
        ``{tag: integrand}`` boundary terms (Neumann, Robin), integrated over the facets of the
        mesh boundary ``tag``; ``w.n`` is the outward normal.
    bilinear, linear
        scikit-fem ``BilinearForm``/``LinearForm`` objects (or lists of them), assembled once by
        scikit-fem: they add ``A u - b`` to the residual. ``form_params`` is passed to ``asm``.
    fields
        Names of the fields of a mixed (``ElementComposite``) basis, one per sub-element, e.g.
        ``("u", "p")``; default ``"u0"``, ``"u1"``, ... A scalar or ``ElementVector`` basis has
        one field, ``"u"`` by default. A vector field ``u`` has components ``u_x``, ``u_y``
        (``u_z``). See :attr:`fields`, :meth:`field_dofs`, :meth:`split`.
    dirichlet
        ``{tag: value}`` or ``{tag: {field_or_component: value}}``. A bare value fixes the only
        field of a single-field space (every component of a vector field); on a mixed space
        say which fields: ``{"inlet": {"u": profile}, "bottom": {"u_y": 0.0}}``, or ``"*"`` for
        all of them. A value is a number; a sequence with one number per component; a callable
        ``g(x)`` or ``g(x, t)`` of the DOF coordinates ``(dim, m)`` returning ``(m,)`` (or
        ``(ncomp, m)`` for a vector field); or the name of a parameter: shape ``()``, ``(B,)``
        or ``(B, 1)`` (per-sample constants) or ``(B, m)`` (one value per DOF, in the order of
        :meth:`dirichlet_dofs_of`). A DOF on several tags takes the value of the last one.
    storage
        Time-dependent problems: the storage integrand ``S(u, v, w)`` (``u * v`` for
        ``"mass"``), ``None`` for steady problems.
    theta
        Theta of the time scheme (1: implicit Euler, 0.5: Crank-Nicolson).
    coefficients
        Kind of each parameter: ``"constant"`` (per sample: ``()``, ``(B,)``, ``(B, 1)``),
        ``"vector"`` (a constant vector such as a body force, ``(ncomp,)`` or ``(B, ncomp)``;
        ``w.name`` then has the component axis first, like a vector field: ``dot(w.g, v)``),
        ``"nodal"`` (DOF vector on ``basis``: ``(n,)``, ``(B, n)``), ``"element"`` (one value per
        element), ``"quadrature"`` (``(nelements, nqp)`` or ``(B, nelements, nqp)``, values at
        the quadrature points of ``basis``), ``"dirichlet"`` (values on the DOFs of the one
        Dirichlet entry that names it: ``(m,)`` or ``(B, m)``) or a scikit-fem basis on the
        same mesh and quadrature. Undeclared parameters are accepted when their shape fits
        one kind only (see :meth:`parameter_kind`); otherwise
        :class:`~femoe.errors.AmbiguousParameterError` says what they could be.
    defaults
        Default parameter values, overridden by the ``params`` of each call.

    Composition: the evaluation is :class:`WeakForm`'s; a Problem builds its pieces, a
    :class:`SparsityPattern`, :class:`DirichletData` with its :class:`DirichletRows`,
    :class:`ParameterKinds` and a :class:`ThetaScheme`, and owns its field table.
    """

    def __init__(
        self,
        basis,
        residual: Integrand | None = None,
        *,
        facets: Mapping[str, Integrand] | None = None,
        bilinear: BilinearForm | Sequence[BilinearForm] | None = None,
        linear: LinearForm | Sequence[LinearForm] | None = None,
        form_params: Mapping[str, Any] | None = None,
        dirichlet: Mapping[str, DirichletValue] | None = None,
        storage: Integrand | str | None = None,
        theta: float = 1.0,
        coefficients: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        name: str = "problem",
        fields: Sequence[str] | None = None,
    ):
        if residual is None and bilinear is None and linear is None:
            raise ProblemError("a Problem needs a residual integrand or scikit-fem forms (bilinear/linear)")
        n = int(basis.N)
        scheme = ThetaScheme(float(theta))
        storage = storage_integrand(storage)
        defaults = dict(defaults or {})
        coefficients = dict(coefficients or {})
        ParameterKinds.check_declared_kinds(coefficients)  # before any work on the mesh
        tb = TorchBasis(basis)
        field_infos: list[FieldInfo] = field_table(basis, fields)

        facet_terms = [FacetTerm(tag, integrand, TorchBasis(FacetBasis(basis.mesh, basis.elem,
                                                                       facets=boundary_facets(basis.mesh, tag))))
                       for tag, integrand in (facets or {}).items()]

        # scikit-fem forms, assembled once
        A = b = None
        bil = [bilinear] if isinstance(bilinear, BilinearForm) else list(bilinear or [])
        lin = [linear] if isinstance(linear, LinearForm) else list(linear or [])
        fp = dict(form_params or {})
        if bil:
            A = sum(asm(f, basis, **fp) for f in bil).tocoo()
        if lin:
            b = np.asarray(sum(asm(f, basis, **fp) for f in lin), dtype=float)
        sparsity = SparsityPattern(n, tb.element_dofs, [ft.tb.element_dofs for ft in facet_terms], A)

        dirichlet_data = DirichletData(
            dirichlet or {}, n=n, doflocs=np.asarray(basis.doflocs), fields=field_infos,
            tag_dofs=lambda tag: np.asarray(basis.get_dofs(boundary_facets(basis.mesh, tag)).all(), dtype=np.int64),
            target=lambda nm: _find_target(field_infos, nm, name))
        parameters = ParameterKinds(coefficients, defaults, n=n, mesh=basis.mesh, basis=basis,
                                    dirichlet_sizes=dirichlet_data.sizes)
        super().__init__(name=name, basis=basis, n=n, tb=tb, facets=facet_terms, A=A, b=b, residual=residual,
                         storage=storage, scheme=scheme, sparsity=sparsity,
                         dirichlet_rows=DirichletRows(dirichlet_data.mask, sparsity), parameters=parameters)
        self._fields = field_infos
        self._dirichlet = dirichlet_data

    # ------------------------------------------------------------------ fields
    @property
    def fields(self) -> tuple[str, ...]:
        """Names of the fields (one per sub-element of a mixed basis; ``("u",)`` otherwise)."""
        return tuple(f.name for f in self._fields)

    @property
    def components(self) -> dict[str, tuple[str, ...]]:
        """Component names of each field (``()`` for scalar fields)."""
        return {f.name: f.components for f in self._fields}

    def _target(self, name: str) -> tuple[FieldInfo, int | None]:
        return _find_target(self._fields, name, self.name)

    def null_space_probes(self, dofs: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Candidate null vectors of the Jacobian and what each is: the indicator of every scalar
        field's DOFs and of every component of a vector field (the constants, for Lagrange
        elements), restricted to ``dofs`` (default all). Used to refuse singular systems
        (:func:`femoe.linalg.check_nonsingular`) instead of returning an arbitrary solution."""
        dofs = np.arange(self.n) if dofs is None else np.asarray(dofs, dtype=np.int64)
        vecs, names = [], []
        for f in self._fields:
            sets = [(f.dofs, f"the constant of field {f.name!r}")] if not f.components else \
                [(d, f"the constant of component {c!r}") for d, c in zip(f.component_dofs, f.components)]
            for d, label in sets:
                v = np.isin(dofs, d).astype(float)
                if v.any():
                    vecs.append(v)
                    names.append(label)
        return (np.array(vecs) if vecs else np.zeros((0, dofs.size))), names

    def field_dofs(self, name: str) -> np.ndarray:
        """Global DOF numbers (ascending) of a field (``"p"``) or component (``"u_x"``)."""
        f, c = self._target(name)
        return f.dofs.copy() if c is None else f.component_dofs[c].copy()

    def field_basis(self, name: str):
        """The scikit-fem basis of one field alone (for interpolation, plots, projections)."""
        return self._target(name)[0].basis

    def split(self, u):
        """``{field: u[..., field_dofs(field)]}``: the part of a DOF vector (numpy or torch, any
        leading batch) that belongs to each field, numbered like :meth:`field_basis`."""
        if len(self._fields) == 1:
            return {self._fields[0].name: u}
        return {f.name: u[..., f.dofs if isinstance(u, np.ndarray) else torch.as_tensor(f.dofs, device=u.device)]
                for f in self._fields}


    # ------------------------------------------------------------------ Dirichlet data
    def dirichlet_dofs_of(self, tag: str, field: str | None = None) -> np.ndarray:
        """The DOFs fixed by the Dirichlet entry of ``tag`` (and ``field``, the key used in the
        ``dirichlet`` dict; may be omitted when the tag has one entry), in the order that a
        per-DOF parameter ``(B, m)`` for that entry follows: component by component,
        ascending within each."""
        return self._dirichlet.dofs_of(tag, field)

    def dirichlet_values(self, params=None, *, t=None, batch: int = 1, device="cpu", dtype=torch.float64) -> torch.Tensor:
        """Values ``g`` on :attr:`dirichlet_dofs`, shape ``(B, n_dirichlet)``."""
        p = params if isinstance(params, Params) else self._params(params, device, dtype, batch)
        return self._dirichlet.values(p, t, batch, device, dtype, kind=self._kind)

    @property
    def dirichlet_depends_on_time(self) -> bool:
        return self._dirichlet.depends_on_time

    # ------------------------------------------------------------------ geometry, patches
    @property
    def doflocs(self) -> np.ndarray:
        """DOF coordinates ``(dim, n)``."""
        return np.asarray(self.basis.doflocs)

    def restrict(self, element_sets: Sequence[np.ndarray]) -> "PatchUnion":
        """The disjoint union of element patches, each with its own copy of its DOFs.

        Evaluating the union once gives every patch's residual on its own field, with the cost
        of one evaluation on (about) the whole mesh, however many patches there are. See
        :class:`PatchUnion`.
        """
        return PatchUnion(self, element_sets)


def _find_target(fields: Sequence[FieldInfo], name: str, problem_name: str) -> tuple[FieldInfo, int | None]:
    """The field a field or component name belongs to, and the component's index (``None`` for
    a field)."""
    for f in fields:
        if name == f.name:
            return f, None
        if name in f.components:
            return f, f.components.index(name)
    valid = [n for f in fields for n in (f.name, *f.components)]
    raise FieldError(f"{name!r} is not a field or component of problem {problem_name!r}; valid names: {valid}")
