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
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from skfem import BilinearForm, FacetBasis, LinearForm, asm

from femoe.assembly.fields import Field, FormParams
from femoe.assembly.form import check_linear_in_test, local_residual, local_residual_and_jacobian
from femoe.assembly.spaces import FieldInfo, field_table
from femoe.assembly.torch_basis import TorchBasis, TorchBasisView
from femoe.errors import AmbiguousParameterError, FieldError, ProblemError, ShapeError, UnusedParameterWarning
from femoe.sparse import BatchedCSR, CSRPattern

log = logging.getLogger(__name__)

Integrand = Callable[..., torch.Tensor]
DirichletValue = float | str | Callable[..., np.ndarray]

_COEFF_KINDS = ("constant", "vector", "nodal", "element", "quadrature", "dirichlet")


class _Params(dict):
    """Parameter tensors of one call plus the resolved kind of each (``kinds``)."""

    kinds: dict[str, Any]


@dataclass
class _DirichletEntry:
    tag: str
    target: str  # field or component name
    dofs: np.ndarray  # component-major, ascending within a component
    counts: tuple[int, ...]  # DOFs per component (one entry for a scalar target)
    value: Any


@dataclass
class _FacetTerm:
    tag: str
    integrand: Integrand
    tb: TorchBasis
    scatter_index: np.ndarray  # CSR positions of the facet-local Jacobian entries


@dataclass(frozen=True)
class ThetaScheme:
    """The time scheme of a time-dependent :class:`Problem`, in one place:

    ``R^t = (S(u^t) - S(u^{t-1})) / dt + theta A(u^t, t) + (1 - theta) A(u^{t-1}, t - dt)``

    (``theta = 1`` implicit Euler, ``0.5`` Crank-Nicolson), and the Jacobian of a step with
    respect to its new level, ``S'(u^t) / dt + theta A'(u^t, t)``. Evaluating ``S`` and ``A`` is
    the problem's business; combining them is the scheme's."""

    theta: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.theta <= 1.0:
            raise ProblemError(f"theta must lie in [0, 1]; got {self.theta}")

    @property
    def needs_new(self) -> bool:
        """Whether the rows read ``A`` at the new level (``theta > 0``)."""
        return self.theta > 0

    @property
    def needs_old(self) -> bool:
        """Whether the rows read ``A`` at the old level (``theta < 1``)."""
        return self.theta < 1

    def rows(self, S_new, S_old, A_new, A_old, dt: float):
        """The step rows; ``A_new`` / ``A_old`` may be ``None`` where their weight is 0."""
        R = (S_new - S_old) / dt
        if self.needs_new:
            R = R + self.theta * A_new
        if self.needs_old:
            R = R + (1 - self.theta) * A_old
        return R

    def new_level_jacobian(self, S_jac, A_jac, dt: float):
        """``S'(u^t) / dt + theta A'(u^t)`` (values on one pattern, or ``A_jac = None`` for theta = 0)."""
        return S_jac / dt if not self.needs_new else S_jac / dt + self.theta * A_jac


class Problem:
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
        self.name = name
        self.basis = basis
        self.mesh = basis.mesh
        self.n = int(basis.N)
        self.residual_integrand = residual
        self.scheme = ThetaScheme(float(theta))
        self.storage_integrand = _storage(storage)
        self.defaults = dict(defaults or {})
        self.coefficients = dict(coefficients or {})
        for k, v in self.coefficients.items():
            if isinstance(v, str) and v not in _COEFF_KINDS:
                raise ProblemError(f"coefficient {k!r}: kind {v!r} is not one of {_COEFF_KINDS} or a basis")
        self._tb = TorchBasis(basis)
        self._fields: list[FieldInfo] = field_table(basis, fields)
        self._param_tbs: dict[tuple[str, bool, str], TorchBasis] = {}
        self._checked: set[int] = set()
        self._read_names: set[str] = set()  # parameter names some form has read (see _warn_unused)
        self._warned_unused: set[str] = set()

        self._facets: list[_FacetTerm] = []
        for tag, integrand in (facets or {}).items():
            fb = FacetBasis(self.mesh, basis.elem, facets=self._boundary(tag))
            self._facets.append(_FacetTerm(tag, integrand, TorchBasis(fb), np.empty(0, dtype=np.int64)))

        # scikit-fem forms, assembled once
        self._A = None
        self._b = None
        bil = [bilinear] if isinstance(bilinear, BilinearForm) else list(bilinear or [])
        lin = [linear] if isinstance(linear, LinearForm) else list(linear or [])
        fp = dict(form_params or {})
        if bil:
            self._A = sum(asm(f, basis, **fp) for f in bil).tocoo()
        if lin:
            self._b = np.asarray(sum(asm(f, basis, **fp) for f in lin), dtype=float)
        self._build_pattern()

        # --- Dirichlet data ------------------------------------------------------------------
        self._dirichlet: list[_DirichletEntry] = self._parse_dirichlet(dirichlet or {})
        is_dir = np.zeros(self.n, dtype=bool)
        for e in self._dirichlet:
            is_dir[e.dofs] = True
        self._build_dirichlet(is_dir)

    @property
    def theta(self) -> float:
        """The theta of :attr:`scheme` (a :class:`ThetaScheme`)."""
        return self.scheme.theta

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
        for f in self._fields:
            if name == f.name:
                return f, None
            if name in f.components:
                return f, f.components.index(name)
        valid = [n for f in self._fields for n in (f.name, *f.components)]
        raise FieldError(f"{name!r} is not a field or component of problem {self.name!r}; valid names: {valid}")

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

    def dirichlet_dofs_of(self, tag: str, field: str | None = None) -> np.ndarray:
        """The DOFs fixed by the Dirichlet entry of ``tag`` (and ``field``, the key used in the
        ``dirichlet`` dict; may be omitted when the tag has one entry), in the order that a
        per-DOF parameter ``(B, m)`` for that entry follows: component by component,
        ascending within each."""
        hits = [e for e in self._dirichlet if e.tag == tag and (field is None or e.target == field)]
        if len(hits) != 1:
            have = [(e.tag, e.target) for e in self._dirichlet]
            raise FieldError(f"no single Dirichlet entry for tag {tag!r}" + (f", field {field!r}" if field else "")
                             + f"; entries (tag, field): {have}")
        return hits[0].dofs.copy()

    def _parse_dirichlet(self, dirichlet: Mapping[str, Any]) -> list[_DirichletEntry]:
        entries = []
        for tag, spec in dirichlet.items():
            tag_dofs = np.asarray(self.basis.get_dofs(self._boundary(tag)).all(), dtype=np.int64)
            if tag_dofs.size == 0:
                raise ProblemError(f"Dirichlet boundary {tag!r} has no degrees of freedom")
            if isinstance(spec, Mapping):
                items = list(spec.items())
                if not items:
                    raise FieldError(f"Dirichlet data of {tag!r} is an empty dict; name a field, e.g. "
                                     f"{{{tag!r}: {{{self.fields[0]!r}: 0.0}}}}")
            elif len(self._fields) > 1:
                raise FieldError(
                    f"Dirichlet data of {tag!r} does not say which fields it fixes, and the space has "
                    f"{len(self._fields)} fields {self.fields}: fixing all of them (the pressure too) is "
                    f"rarely meant. Name them, e.g. dirichlet={{{tag!r}: {{{self.fields[0]!r}: value}}}}, "
                    f"or a component like {self._example_component()!r}; use {{{tag!r}: {{'*': value}}}} "
                    "to fix every field"
                )
            else:
                items = [(self.fields[0], spec)]
            for target, value in items:
                names = self.fields if target == "*" else (str(target),)
                for nm in names:
                    f, c = self._target(nm)
                    comp_sets = [f.dofs] if not f.components else (
                        list(f.component_dofs) if c is None else [f.component_dofs[c]])
                    parts = [np.intersect1d(tag_dofs, d) for d in comp_sets]
                    dofs = np.concatenate(parts)
                    if dofs.size == 0:
                        raise FieldError(f"Dirichlet boundary {tag!r} holds no DOFs of {nm!r}")
                    entries.append(_DirichletEntry(tag, nm, dofs, tuple(int(p.size) for p in parts), value))
        names_used = [e.value for e in entries if isinstance(e.value, str)]
        self._dirichlet_params = {v: [e for e in entries if e.value == v] for v in names_used}
        return entries

    def _example_component(self) -> str:
        for f in self._fields:
            if f.components:
                return f.components[-1]
        return self.fields[-1]

    def _build_pattern(self) -> None:
        """The CSR pattern of the Jacobian and where every local entry lands in it (once)."""

        def local_keys(ed: np.ndarray) -> np.ndarray:
            rows = np.broadcast_to(ed.T[:, :, None], (ed.shape[1], ed.shape[0], ed.shape[0]))
            cols = np.broadcast_to(ed.T[:, None, :], rows.shape)
            return (rows.astype(np.int64) * self.n + cols).reshape(-1)

        keys = local_keys(self._tb.element_dofs)
        parts = [keys, np.arange(self.n, dtype=np.int64) * (self.n + 1)]  # diagonal always stored
        parts += [local_keys(ft.tb.element_dofs) for ft in self._facets]
        if self._A is not None:
            parts.append(self._A.row.astype(np.int64) * self.n + self._A.col)
        uniq, inverse = np.unique(np.concatenate(parts), return_inverse=True)
        prow, pcol = np.divmod(uniq, self.n)
        indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.add.at(indptr, prow + 1, 1)
        self.pattern = CSRPattern(np.cumsum(indptr), pcol.astype(np.int64), (self.n, self.n))
        sizes = np.cumsum([0] + [p.size for p in parts])
        self._cell_index = inverse[sizes[0] : sizes[1]]
        self._diag_index = inverse[sizes[1] : sizes[2]]
        for i, ft in enumerate(self._facets):
            ft.scatter_index = inverse[sizes[2 + i] : sizes[3 + i]]
        if self._A is not None:
            self._A_values = np.zeros(self.pattern.nnz)
            np.add.at(self._A_values, inverse[sizes[-2] : sizes[-1]], self._A.data)
        self._torch_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def _build_dirichlet(self, is_dir: np.ndarray) -> None:
        self.dirichlet_dofs = np.nonzero(is_dir)[0]
        self.free_dofs = np.nonzero(~is_dir)[0]
        # which stored entries lie in Dirichlet rows (zeroed; the diagonal becomes 1)
        self._dir_row_entry = is_dir[self.pattern.rows]
        self._dir_diag = np.zeros(self.pattern.nnz, dtype=bool)
        self._dir_diag[self._diag_index[self.dirichlet_dofs]] = True
        self._torch_cache = {}

    def restrict(self, element_sets: Sequence[np.ndarray]) -> "PatchUnion":
        """The disjoint union of element patches, each with its own copy of its DOFs.

        Evaluating the union once gives every patch's residual on its own field, with the cost
        of one evaluation on (about) the whole mesh, however many patches there are. See
        :class:`PatchUnion`.
        """
        return PatchUnion(self, element_sets)

    # ------------------------------------------------------------------ properties
    @property
    def is_time_dependent(self) -> bool:
        return self.storage_integrand is not None

    @property
    def doflocs(self) -> np.ndarray:
        """DOF coordinates ``(dim, n)``."""
        return np.asarray(self.basis.doflocs)

    @property
    def mass_diagonal(self) -> np.ndarray:
        """``M_ii = int sum_c phi_ic^2 dx``, the diagonal of the (all-field) mass matrix (cached).

        Weak-form rows scale like ``M_ii`` (like ``h^d``); dividing by it turns them into
        pointwise, mesh-independent residuals (see :meth:`row_scale`). Unlike the lumped mass it
        is positive for every Lagrange element (P2 vertex functions integrate to zero).
        """
        if "_mass_diag" not in self.__dict__:
            tb = self._tb
            if isinstance(tb, TorchBasisView):  # patches: the parent's jets of the chosen cells
                phi, dx = tb.parent._phi[:, :, tb.cells], np.asarray(tb.basis.dx)[tb.cells]
            else:
                phi, dx = tb._phi, np.asarray(tb.basis.dx)
            values = np.concatenate([np.arange(lay.offset, lay.offset + lay.n_value) for lay in tb.layouts])
            local = np.einsum("cieq,eq->ie", phi[values] ** 2, dx)
            diag = np.zeros(self.n)
            np.add.at(diag, tb.element_dofs.reshape(-1), local.reshape(-1))
            self.__dict__["_mass_diag"] = diag
        return self.__dict__["_mass_diag"]

    def row_scale(self) -> np.ndarray:
        """Row weights ``1 / M_ii`` (1 on Dirichlet rows): ``R_i / M_ii`` approximates the strong
        residual at DOF ``i`` independently of the element size, which is what a ridge or a
        loss weight can be compared with."""
        d = self.mass_diagonal
        s = 1.0 / np.where(d > 0, d, 1.0)
        s[self.dirichlet_dofs] = 1.0
        return s

    def _boundary(self, tag: str) -> np.ndarray:
        bnd = getattr(self.mesh, "boundaries", None) or {}
        if tag not in bnd:
            raise ProblemError(
                f"boundary tag {tag!r} is not defined on the mesh; available: {sorted(bnd)}. "
                "Tags come from the mesh file's physical groups (femoe.mesh.read_mesh) or from "
                "mesh.with_boundaries({...})"
            )
        if len(bnd[tag]) == 0:
            raise ProblemError(
                f"boundary tag {tag!r} holds no facets: the mesh file names the group but no elements "
                "carry it (read_mesh warned about it). Add the boundary curves/surfaces to the physical "
                "group in Gmsh and save the mesh again"
            )
        return bnd[tag]

    def _tensors(self, device, dtype) -> dict[str, torch.Tensor]:
        key = (str(torch.device(device)), dtype)
        if key not in self._torch_cache:
            t = {
                "cell_index": torch.as_tensor(self._cell_index, device=device),
                "dir_keep": torch.as_tensor(~self._dir_row_entry, device=device),
                "dir_diag": torch.as_tensor(self._dir_diag, dtype=dtype, device=device),
                "dirichlet": torch.as_tensor(self.dirichlet_dofs, device=device),
            }
            for i, ft in enumerate(self._facets):
                t[f"facet_index_{i}"] = torch.as_tensor(ft.scatter_index, device=device)
            if self._A is not None:
                t["A_values"] = torch.as_tensor(self._A_values, dtype=dtype, device=device)
            if self._b is not None:
                t["b"] = torch.as_tensor(self._b, dtype=dtype, device=device)
            self._torch_cache[key] = t
        return self._torch_cache[key]

    # ------------------------------------------------------------------ inputs
    def _as_batch(self, u: torch.Tensor, name: str = "u") -> tuple[torch.Tensor, bool]:
        if not isinstance(u, torch.Tensor):
            raise ShapeError(f"{name} must be a torch tensor of shape (batch, {self.n}) or ({self.n},); got {type(u).__name__}")
        if not u.is_floating_point():
            raise ShapeError(f"{name} must be float32 or float64; got {u.dtype}")
        if u.shape[-1] != self.n or u.dim() not in (1, 2):
            raise ShapeError(f"{name} must have shape (batch, {self.n}) or ({self.n},); got {tuple(u.shape)}")
        return (u.unsqueeze(0), True) if u.dim() == 1 else (u, False)

    def _params(self, params: Mapping[str, Any] | None, device, dtype, batch: int | None = None) -> _Params:
        merged = {**self.defaults, **(params or {})}
        out = _Params()
        for k, v in merged.items():
            if isinstance(v, torch.Tensor):
                if v.is_floating_point() and v.dtype != dtype:
                    raise ShapeError(f"parameter {k!r} has dtype {v.dtype} but u has {dtype}; convert one of them")
                out[k] = v.to(device)
            elif callable(v):
                out[k] = v
            else:
                out[k] = torch.as_tensor(v, dtype=dtype, device=device)
        out.kinds = {k: self.parameter_kind(k, v, batch=batch) for k, v in out.items()
                     if isinstance(v, torch.Tensor)}
        return out

    def _nqp(self) -> int:
        return int(np.asarray(self.basis.dx).shape[-1])

    def parameter_kind(self, name: str, value, batch: int | None = None):
        """What a parameter value is: ``"constant"``, ``"nodal"``, ``"element"``, ``"quadrature"``,
        ``"dirichlet"`` or a basis (declared kinds are checked against the shape).

        Undeclared values are read by shape, and only when one reading fits:

        - ``()`` and ``(B, 1)``: per-sample constants;
        - ``(n,)``/``(B, n)``: nodal; ``(nelements,)``/``(B, nelements)``: per element;
          ``(nelements, nqp)``/``(B, nelements, nqp)``: quadrature values;
        - a parameter named in the Dirichlet data, ``(B, m)``: one value per DOF of its entry;
        - ``(k,)`` with any other ``k``: ``k`` per-sample constants, if ``k`` is the batch of
          ``u``, or ``u`` has no batch and ``k`` is well below the mesh size (``2 k <
          min(n, nelements)``); a longer vector is far more likely a field of the wrong mesh or
          length than a batch, and raises.

        Anything else raises :class:`~femoe.errors.AmbiguousParameterError` naming the shapes the
        parameter could mean and how to declare it.
        """
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(np.asarray(value, dtype=float))
        kind = self.coefficients.get(name)
        shape = tuple(value.shape)
        n, nel, nqp = self.n, self.mesh.nelements, self._nqp()
        dir_m = [int(e.dofs.size) for e in self._dirichlet_params.get(name, [])]
        def how(kinds=None):
            k = " or ".join(repr(x) for x in kinds) if kinds else f"one of {list(_COEFF_KINDS)} or a basis"
            return f"declare it: Problem(coefficients={{{name!r}: KIND}}) with KIND {k}"

        if kind is not None:
            self._check_declared(name, kind, shape, dir_m)
            return kind
        if value.dim() == 0 or shape[-1:] == (1,) and value.dim() <= 2:
            return "constant"
        fits = []
        last = shape[-1]
        if value.dim() in (1, 2):
            if last == n:
                fits.append(("nodal", f"a nodal field (n = {n} DOFs)"))
            if last == nel:
                fits.append(("element", f"per-element values (nelements = {nel})"))
            if len(dir_m) == 1 and last == dir_m[0]:
                fits.append(("dirichlet", f"one Dirichlet value per DOF of its entry (m = {dir_m[0]})"))
        if value.dim() in (2, 3) and shape[-2:] == (nel, nqp):
            fits.append(("quadrature", f"values at the quadrature points ({nel}, {nqp})"))
        if value.dim() == 1:
            k = shape[0]
            batch_ok = (batch is not None and batch > 1 and k == batch) or (
                (batch is None or batch == 1) and 2 * k < min(n, nel) and not fits)
            if batch_ok:
                fits.append(("constant", f"{k} per-sample constants"))
            elif not fits:
                raise AmbiguousParameterError(
                    f"cannot tell what parameter {name!r} of shape {shape} is: it is not a nodal field "
                    f"(n = {n}), not per-element values (nelements = {nel})"
                    + (f", not one value per Dirichlet DOF (m = {dir_m})" if dir_m else "")
                    + f", and as a batch of {k} per-sample constants it does not match the batch of u "
                    f"({batch if batch is not None else 'none'}). A field from another mesh or of the wrong "
                    f"length is the usual cause; if it really is a batch of constants, give u that batch or "
                    f"{how(['constant'])}"
                )
            elif len(dir_m) == 1 and k == dir_m[0]:
                # (m,) could be one sample's per-DOF values or m samples' constants
                fits.append(("constant", f"{k} per-sample constants"))
        if len(fits) == 1:
            return fits[0][0]
        if not fits:
            raise AmbiguousParameterError(
                f"cannot tell what parameter {name!r} of shape {shape} is: its last dimension is neither "
                f"n = {n} (nodal), nelements = {nel} (element), 1 (per-sample constant)"
                + (f", m = {dir_m} (Dirichlet values per DOF)" if dir_m else "")
                + f" nor its last two ({nel}, {nqp}) (quadrature); check its shape or {how()}"
            )
        raise AmbiguousParameterError(
            f"parameter {name!r} of shape {shape} is ambiguous: it could be "
            + " or ".join(d for _, d in fits) + f"; {how([k for k, _ in fits])}"
        )

    def _check_declared(self, name, kind, shape, dir_m) -> None:
        n, nel, nqp = self.n, self.mesh.nelements, self._nqp()
        if not isinstance(kind, str):
            return  # a basis: checked when the field is built
        ok = {
            "constant": len(shape) <= 1 or (len(shape) == 2 and shape[1] == 1),
            "vector": len(shape) in (1, 2),
            "nodal": len(shape) in (1, 2) and shape[-1] == n,
            "element": len(shape) in (1, 2) and shape[-1] == nel,
            "quadrature": len(shape) in (2, 3) and shape[-2:] == (nel, nqp),
            "dirichlet": len(dir_m) == 1 and len(shape) in (1, 2) and shape[-1] == dir_m[0],
        }[kind]
        if not ok:
            expect = {
                "constant": "(), (B,) or (B, 1)",
                "vector": "(ncomp,) or (B, ncomp)",
                "nodal": f"({n},) or (B, {n})",
                "element": f"({nel},) or (B, {nel})",
                "quadrature": f"({nel}, {nqp}) or (B, {nel}, {nqp})",
                "dirichlet": (f"({dir_m[0]},) or (B, {dir_m[0]})" if len(dir_m) == 1 else
                              "a parameter named by exactly one Dirichlet entry"),
            }[kind]
            raise ShapeError(f"parameter {name!r} is declared {kind!r} and must have shape {expect}; got {shape}")

    def _kind(self, p, name, value):
        kinds = getattr(p, "kinds", None)
        if kinds is not None and name in kinds:
            return kinds[name]
        return self.parameter_kind(name, value)

    def _note_reads(self, w: FormParams) -> None:
        self._read_names.update(w.read)

    def _warn_unused(self, p) -> None:
        """Warn (once per name) about parameters given in a call that nothing has read."""
        read, warned = self._read_names, self._warned_unused
        unused = [k for k in p if k not in read and k not in self._dirichlet_params and k not in self.defaults
                  and k not in warned]
        if unused and (self.residual_integrand is not None or self._facets):
            warned.update(unused)
            warnings.warn(
                f"problem {self.name!r}: parameter(s) {unused} were given but no form or Dirichlet value "
                f"reads them (forms read {sorted(n for n in read if n not in ('x', 'h', 'n', 't'))}), so the "
                "result does not depend on them; check the name (w.<name> in the form, or the parameter "
                "named in dirichlet=...)", UnusedParameterWarning, stacklevel=3)

    def _form_params(self, tb: TorchBasis, params: dict, B: int, device, dtype, t) -> FormParams:
        tt = tb.tensors(device, dtype)
        # geometry broadcasts like a field value: (components, test jet, batch, elements, points)
        w = FormParams(x=tt["x"][:, None, None])
        if "h" in tt:
            w["h"] = tt["h"][None, None]
        if "n" in tt:
            w["n"] = tt["n"][:, None, None]
        if t is not None:
            w["t"] = t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=dtype, device=device)
            if w["t"].dim() == 1:
                w["t"] = w["t"].reshape(-1, 1, 1)
        for name, value in params.items():
            if callable(value) and not isinstance(value, torch.Tensor):
                w[name] = value
                continue
            kind = self._kind(params, name, value)
            if kind == "constant":
                w[name] = value.reshape(-1, 1, 1) if value.dim() >= 1 else value
            elif kind == "vector":
                # components first, then the test-jet, batch, element and point axes of a field
                v = value if value.dim() == 2 else value.unsqueeze(0)
                w[name] = v.T.reshape(v.shape[1], 1, v.shape[0], 1, 1)
            elif kind == "dirichlet":
                w[name] = value
            elif kind == "element":
                v = value if value.dim() == 2 else value.unsqueeze(0)
                cells = torch.as_tensor(tb.element_index, device=v.device)
                w[name] = Field(v[:, cells].unsqueeze(-1), None)
            elif kind == "quadrature":
                if tb.is_facet:
                    continue  # values at cell quadrature points mean nothing on facets
                v = value if value.dim() == 3 else value.unsqueeze(0)
                cells = torch.as_tensor(getattr(tb, "cells", tb.element_index), device=v.device)
                w[name] = Field(v[:, cells], None)
            else:
                ptb = self._param_basis(name, kind, tb)
                v = value if value.dim() == 2 else value.unsqueeze(0)
                expected = self.n if kind == "nodal" else ptb.basis.N
                if v.shape[-1] != expected:
                    raise ShapeError(f"parameter {name!r} must have {expected} DOF values; got {tuple(value.shape)}")
                fields = ptb.fields(ptb.jets(v))
                w[name] = fields[0] if len(fields) == 1 else fields
        return w

    def _param_basis(self, name: str, kind, tb: TorchBasis) -> TorchBasis:
        if kind == "nodal":
            return tb
        key = (name, tb.is_facet, id(tb))
        if key not in self._param_tbs:
            if tb.is_facet:
                self._param_tbs[key] = TorchBasis(tb.basis.with_element(kind.elem))
            else:
                if kind.mesh is not self.mesh or kind.quadrature[0].shape != self.basis.quadrature[0].shape:
                    raise ProblemError(f"the basis of parameter {name!r} must use the problem's mesh and quadrature "
                                       "(build it with problem.basis.with_element(element))")
                self._param_tbs[key] = TorchBasis(kind)
        return self._param_tbs[key]

    def dirichlet_values(self, params=None, *, t=None, batch: int = 1, device="cpu", dtype=torch.float64) -> torch.Tensor:
        """Values ``g`` on :attr:`dirichlet_dofs`, shape ``(B, n_dirichlet)``."""
        p = params if isinstance(params, _Params) else self._params(params, device, dtype, batch)
        g = torch.zeros(batch, self.n, dtype=dtype, device=device)
        tc = self._tensors(device, dtype)
        for i, e in enumerate(self._dirichlet):
            # numbers and g(x) do not change between calls: evaluated (and moved) once per device
            fixed = not isinstance(e.value, str) and not (callable(e.value) and _n_args(e.value) >= 2)
            if fixed and f"dir_value_{i}" in tc:
                val = tc[f"dir_value_{i}"]
            else:
                val = self._entry_values(e, p, t, device, dtype)
                if fixed:
                    tc[f"dir_value_{i}"] = val
            if val.shape[0] not in (1, batch):
                raise ShapeError(f"Dirichlet data of {e.tag!r} ({e.target!r}) has batch {val.shape[0]} but the "
                                 f"call has batch {batch}")
            if f"dir_dofs_{i}" not in tc:
                tc[f"dir_dofs_{i}"] = torch.as_tensor(e.dofs, device=device)
            g = g.index_copy(1, tc[f"dir_dofs_{i}"], val.expand(batch, -1))
        return g[:, self.dirichlet_dofs]

    def _entry_values(self, e: _DirichletEntry, p, t, device, dtype) -> torch.Tensor:
        """Values of one Dirichlet entry, ``(1 or B, m)``."""
        m, ncomp = int(e.dofs.size), len(e.counts)
        value = e.value
        where = f"Dirichlet data of {e.tag!r} ({e.target!r})"
        if isinstance(value, str):
            if value not in p:
                raise ProblemError(f"{where} names parameter {value!r}, which was not given; pass it in params")
            val = p[value]
            if not isinstance(val, torch.Tensor):
                raise ProblemError(f"{where}: parameter {value!r} must be a number or tensor; got {type(val).__name__}")
            kind = self._kind(p, value, val)
            if kind == "dirichlet":
                return val.reshape(-1, m)
            if kind != "constant":
                raise ProblemError(f"{where}: parameter {value!r} is {kind!r}; a Dirichlet parameter is a "
                                   f"per-sample constant or one value per DOF (B, {m})")
            return val.reshape(-1, 1).expand(-1, m)
        if isinstance(value, torch.Tensor):
            raise ProblemError(f"{where} is a tensor; give differentiable boundary data as a named parameter: "
                               f"dirichlet={{{e.tag!r}: {{{e.target!r}: 'g'}}}} and params={{'g': tensor}}")
        if callable(value):
            tt = 0.0 if t is None else t
            parts, start = [], 0
            for c, cnt in enumerate(e.counts):
                x = self.doflocs[:, e.dofs[start : start + cnt]]
                start += cnt
                arr = np.asarray(value(x, float(tt)) if _n_args(value) >= 2 else value(x), dtype=float)
                if ncomp > 1:
                    if arr.ndim >= 1 and arr.shape[0] == ncomp and arr.ndim <= 2:
                        arr = arr[c]
                    elif arr.ndim != 0:
                        raise ProblemError(
                            f"{where}: g(x) must return shape ({ncomp}, m) for the {ncomp} components of "
                            f"{e.target!r} (or a number); got {arr.shape}")
                try:
                    parts.append(np.broadcast_to(arr, (cnt,)))
                except ValueError:
                    raise ProblemError(f"{where}: g(x) returned shape {arr.shape} for {cnt} DOFs") from None
            return torch.as_tensor(np.concatenate(parts), dtype=dtype, device=device).reshape(1, m)
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 0:
            return torch.full((1, m), float(arr), dtype=dtype, device=device)
        if arr.shape == (ncomp,) and ncomp > 1:
            return torch.as_tensor(np.repeat(arr, e.counts), dtype=dtype, device=device).reshape(1, m)
        if arr.shape == (m,):
            return torch.as_tensor(arr, dtype=dtype, device=device).reshape(1, m)
        raise ProblemError(f"{where}: a value of shape {arr.shape} fits neither one number per component "
                           f"({ncomp}) nor one per DOF ({m})")

    # ------------------------------------------------------------------ evaluation
    def _check(self, integrand, tb, jets, w):
        if id(integrand) not in self._checked:
            check_linear_in_test(integrand, tb, jets[:, :1].detach(), w)
            self._checked.add(id(integrand))

    def _spatial(self, u: torch.Tensor, params: dict, t, jacobian: bool, create_graph: bool):
        """``A(u)`` (no Dirichlet treatment): global residual and CSR values (or None)."""
        B, device, dtype = u.shape[0], u.device, u.dtype
        tc = self._tensors(device, dtype)
        R = u.new_zeros(B, self.n)
        vals = u.new_zeros(B, self.pattern.nnz) if jacobian else None
        if self.residual_integrand is not None:
            w = self._form_params(self._tb, params, B, device, dtype, t)
            jets = self._tb.jets(u)
            self._check(self.residual_integrand, self._tb, jets, w)
            if jacobian:
                r, K = local_residual_and_jacobian(self.residual_integrand, self._tb, jets, w, create_graph)
                vals = vals.index_add(1, tc["cell_index"], K.reshape(B, -1))
            else:
                r = local_residual(self.residual_integrand, self._tb, jets, w)
            R = R + self._tb.scatter(r, self.n)
            self._note_reads(w)
        for i, ft in enumerate(self._facets):
            w = self._form_params(ft.tb, params, B, device, dtype, t)
            jets = ft.tb.jets(u)
            self._check(ft.integrand, ft.tb, jets, w)
            if jacobian:
                r, K = local_residual_and_jacobian(ft.integrand, ft.tb, jets, w, create_graph)
                vals = vals.index_add(1, tc[f"facet_index_{i}"], K.reshape(B, -1))
            else:
                r = local_residual(ft.integrand, ft.tb, jets, w)
            R = R + ft.tb.scatter(r, self.n)
            self._note_reads(w)
        if self._A is not None:
            A = BatchedCSR(self.pattern, tc["A_values"].unsqueeze(0))
            R = R + A.matvec(u)
            if jacobian:
                vals = vals + tc["A_values"]
        if self._b is not None:
            R = R - tc["b"]
        return R, vals

    def _storage(self, u, params, t, jacobian, create_graph):
        w = self._form_params(self._tb, params, u.shape[0], u.device, u.dtype, t)
        jets = self._tb.jets(u)
        self._check(self.storage_integrand, self._tb, jets, w)
        tc = self._tensors(u.device, u.dtype)
        if jacobian:
            r, K = local_residual_and_jacobian(self.storage_integrand, self._tb, jets, w, create_graph)
            vals = u.new_zeros(u.shape[0], self.pattern.nnz).index_add(1, tc["cell_index"], K.reshape(u.shape[0], -1))
        else:
            r, vals = local_residual(self.storage_integrand, self._tb, jets, w), None
        self._note_reads(w)
        return self._tb.scatter(r, self.n), vals

    def _apply_dirichlet(self, R, vals, u, params, t):
        tc = self._tensors(u.device, u.dtype)
        if self.dirichlet_dofs.size:
            g = self.dirichlet_values(params, t=t, batch=u.shape[0], device=u.device, dtype=u.dtype)
            R = R.index_copy(1, tc["dirichlet"], u[:, tc["dirichlet"]] - g)
            if vals is not None:
                vals = vals * tc["dir_keep"] + tc["dir_diag"]
        return R, vals

    def _param_batches(self, p: _Params) -> dict[str, int]:
        """The batch each parameter tensor carries (1 when it has none)."""
        out = {}
        for k, v in p.items():
            if not isinstance(v, torch.Tensor):
                continue
            out[k] = int(v.shape[0]) if v.dim() >= _batched_ndim(p.kinds[k]) else 1
        return out

    def _prepare(self, u, params):
        u, squeeze = self._as_batch(u)
        p = self._params(params, u.device, u.dtype, batch=u.shape[0] if not squeeze else None)
        batches = self._param_batches(p)
        B = max([u.shape[0], *batches.values()])
        bad = {k: b for k, b in batches.items() if b not in (1, B)}
        if u.shape[0] not in (1, B) or bad:
            raise ShapeError(f"batch sizes disagree: u has batch {u.shape[0]}, the parameters "
                             f"{ {k: b for k, b in batches.items() if b > 1} }; give every input the same batch "
                             "(or none)")
        return u.expand(B, -1), p, squeeze and B == 1

    def _create_graph(self, u, p) -> bool:
        return torch.is_grad_enabled() and (
            u.requires_grad or any(isinstance(v, torch.Tensor) and v.requires_grad for v in p.values())
        )

    def residual(self, u: torch.Tensor, params: Mapping[str, Any] | None = None, *, t: float | None = None) -> torch.Tensor:
        """Steady residual ``R(u; p)``, shape of ``u`` (``(B, n)`` or ``(n,)``).

        Differentiable with respect to ``u`` and every parameter tensor.
        """
        u, p, squeeze = self._prepare(u, params)
        R, _ = self._spatial(u, p, t, jacobian=False, create_graph=False)
        R, _ = self._apply_dirichlet(R, None, u, p, t)
        self._warn_unused(p)
        return R[0] if squeeze else R

    def weak_residual(self, u: torch.Tensor, params: Mapping[str, Any] | None = None, *,
                      t: float | None = None) -> torch.Tensor:
        """The weak-form residual in *every* row, Dirichlet rows included (not replaced by
        ``u - g``): what those rows hold at a solution are the reactions, the forces the
        boundary condition exerts (see :func:`femoe.boundary.reaction`). Shape of ``u``;
        differentiable like :meth:`residual`."""
        u, p, squeeze = self._prepare(u, params)
        R, _ = self._spatial(u, p, t, jacobian=False, create_graph=False)
        self._warn_unused(p)
        return R[0] if squeeze else R

    def residual_and_jacobian(self, u: torch.Tensor, params: Mapping[str, Any] | None = None, *,
                              t: float | None = None) -> tuple[torch.Tensor, BatchedCSR]:
        """Residual and its Jacobian ``dR/du`` as a :class:`~femoe.sparse.BatchedCSR` on
        :attr:`pattern` (the residual keeps the batch shape of ``u``; the Jacobian always has
        a batch axis). Both are differentiable with respect to ``u`` and the parameters."""
        u, p, squeeze = self._prepare(u, params)
        R, vals = self._spatial(u, p, t, jacobian=True, create_graph=self._create_graph(u, p))
        R, vals = self._apply_dirichlet(R, vals, u, p, t)
        self._warn_unused(p)
        return (R[0] if squeeze else R), BatchedCSR(self.pattern, vals)

    def jacobian(self, u, params=None, *, t=None) -> BatchedCSR:
        """The Jacobian ``dR/du`` (see :meth:`residual_and_jacobian`)."""
        return self.residual_and_jacobian(u, params, t=t)[1]

    # ------------------------------------------------------------------ time stepping
    def _need_time(self):
        if not self.is_time_dependent:
            raise ProblemError(f"problem {self.name!r} is steady (no storage term); use residual()")

    def step_residual(self, u_new, u_old, dt: float, params=None, *, t_new: float = 0.0,
                      jacobian: bool = False):
        """Theta-scheme residual of one step ``u_old -> u_new`` (and ``dR/du_new`` if asked).

        ``R = (S(u_new) - S(u_old)) / dt + theta A(u_new, t_new) + (1 - theta) A(u_old, t_new - dt)``,
        with Dirichlet rows ``u_new - g(t_new)``.
        """
        self._need_time()
        if not dt > 0:
            raise ProblemError(f"dt must be positive; got {dt}")
        u_new, p, squeeze = self._prepare(u_new, params)
        u_old, _ = self._as_batch(u_old, "u_old")
        u_old = u_old.expand(u_new.shape[0], -1)
        cg = self._create_graph(u_new, p) or (torch.is_grad_enabled() and u_old.requires_grad)
        sch = self.scheme
        S1, Sv = self._storage(u_new, p, t_new, jacobian, cg)
        S0, _ = self._storage(u_old, p, t_new - dt, False, cg)
        A1, Av = self._spatial(u_new, p, t_new, jacobian, cg) if sch.needs_new else (None, None)
        A0 = self._spatial(u_old, p, t_new - dt, False, cg)[0] if sch.needs_old else None
        R = sch.rows(S1, S0, A1, A0, dt)
        vals = sch.new_level_jacobian(Sv, Av, dt) if jacobian else None
        R, vals = self._apply_dirichlet(R, vals, u_new, p, t_new)
        self._warn_unused(p)
        R = R[0] if squeeze else R
        return (R, BatchedCSR(self.pattern, vals)) if jacobian else R

    def trajectory_residual(self, U: torch.Tensor, u0: torch.Tensor, dt: float, params=None, *,
                            t0: float = 0.0) -> torch.Tensor:
        """Residuals of all steps of a trajectory at once.

        ``U`` holds levels ``1..T``, shape ``(B, T, n)``; ``u0`` the initial level ``(B, n)``.
        Returns ``(B, T, n)``. Parameters are shared by all levels of a sample.
        """
        self._need_time()
        if U.dim() != 3 or U.shape[-1] != self.n:
            raise ShapeError(f"U must have shape (batch, T, {self.n}); got {tuple(U.shape)}")
        B, T, n = U.shape
        u0, _ = self._as_batch(u0, "u0")
        levels = torch.cat([u0.expand(B, -1).unsqueeze(1), U], dim=1)  # (B, T+1, n)
        p = self._params(params, U.device, U.dtype, batch=B)
        S, _, A, _ = self._levels(levels, dt, p, t0, jacobian=False, create_graph=False)
        R = self._steps(S, A, levels, dt, p, t0)
        self._warn_unused(p)
        return R

    def _levels(self, levels: torch.Tensor, dt: float, p: _Params, t0: float, jacobian: bool, create_graph: bool):
        """Storage ``S`` and spatial term ``A`` of every level ``(B, T + 1, n)`` in one batched
        evaluation (levels at ``t0 + l dt``), with their CSR values ``(B (T + 1), nnz)`` if asked."""
        B, L, n = levels.shape
        flat = levels.reshape(B * L, n)
        p_rep = _Params({k: _repeat_batch(v, B, L, p.kinds.get(k)) for k, v in p.items()})
        p_rep.kinds = p.kinds
        t_flat = (t0 + dt * torch.arange(L, dtype=levels.dtype, device=levels.device)).repeat(B)
        S, Sv = self._storage(flat, p_rep, t_flat, jacobian, create_graph)
        A, Av = self._spatial(flat, p_rep, t_flat, jacobian, create_graph)
        return S.reshape(B, L, n), Sv, A.reshape(B, L, n), Av

    def _steps(self, S: torch.Tensor, A: torch.Tensor, levels: torch.Tensor, dt: float, p: _Params,
               t0: float) -> torch.Tensor:
        """The theta-scheme rows ``(B, T, n)`` of steps ``1..T`` from the levels' ``S`` and ``A``,
        Dirichlet rows ``u - g(t)``."""
        R = self.scheme.rows(S[:, 1:], S[:, :-1], A[:, 1:], A[:, :-1], dt)
        if self.dirichlet_dofs.size:
            B, T = R.shape[0], R.shape[1]
            d = torch.as_tensor(self.dirichlet_dofs, device=R.device)
            g = torch.stack([self.dirichlet_values(p, t=t0 + dt * (k + 1), batch=B, device=R.device, dtype=R.dtype)
                             for k in range(T)], dim=1)
            R = R.index_copy(2, d, levels[:, 1:, d] - g)
        return R

    def level_jacobians(self, U: torch.Tensor, dt: float, params=None, *, t0: float = 0.0,
                        create_graph: bool | None = None) -> tuple[BatchedCSR, BatchedCSR]:
        """Jacobians of every level of a trajectory at once, for linearising
        :meth:`trajectory_residual`.

        ``U`` holds levels ``0..T``, shape ``(B, T + 1, n)``. Returns ``(P, Q)`` with batch
        ``B (T + 1)`` (level-major within a sample): ``P_l = S'(u^l) / dt + theta A'(u^l, t_l)`` (the
        step Jacobian with respect to the new level) and ``Q_l = A'(u^l, t_l)``, both with unit
        Dirichlet rows. Then ``d R^t = P_t dU^t + (Q_{t-1} - P_{t-1}) dU^{t-1}``.
        """
        return self.trajectory_residual_and_jacobians(U, dt, params, t0=t0, create_graph=create_graph)[1:]

    def trajectory_residual_and_jacobians(self, U: torch.Tensor, dt: float, params=None, *, t0: float = 0.0,
                                          create_graph: bool | None = None
                                          ) -> tuple[torch.Tensor, BatchedCSR, BatchedCSR]:
        """:meth:`trajectory_residual` of the levels ``U`` ``(B, T + 1, n)`` (level 0 the initial
        one), shape ``(B, T, n)``, and :meth:`level_jacobians` ``(P, Q)``, from one evaluation of
        every level's storage and spatial terms (the linearisation a least-squares step needs)."""
        self._need_time()
        if U.dim() != 3 or U.shape[-1] != self.n or U.shape[1] < 2:
            raise ShapeError(f"U must have shape (batch, T + 1 >= 2, {self.n}); got {tuple(U.shape)}")
        B = U.shape[0]
        p = self._params(params, U.device, U.dtype, batch=B)
        cg = self._create_graph(U, p) if create_graph is None else create_graph
        S, Sv, A, Av = self._levels(U, dt, p, t0, jacobian=True, create_graph=cg)
        R = self._steps(S, A, U, dt, p, t0)
        tc = self._tensors(U.device, U.dtype)
        P = self.scheme.new_level_jacobian(Sv, Av, dt)
        Q = Av
        if self.dirichlet_dofs.size:
            P = P * tc["dir_keep"] + tc["dir_diag"]
            Q = Q * tc["dir_keep"] + tc["dir_diag"]
        self._warn_unused(p)
        return R, BatchedCSR(self.pattern, P), BatchedCSR(self.pattern, Q)


class PatchUnion(Problem):
    """The disjoint union of element patches of a parent :class:`Problem`.

    Patch ``k`` consists of the elements ``element_sets[k]`` and has its own copy of their DOFs
    (``local_dofs[k]``, global numbers, sorted); in the union they are numbered
    ``offsets[k] .. offsets[k+1]``. The union is itself a Problem: its residual, evaluated once,
    gives each patch's residual for its own field, at the cost of one evaluation on the union
    of the patches. A row of the union equals the parent's row wherever the patch contains the
    whole element star of that DOF (for an expert: its owned rows), which :attr:`complete_rows`
    marks. Nodal parameters are given on the parent's DOFs and gathered; element parameters on
    the parent's elements.
    """

    def __init__(self, parent: Problem, element_sets: Sequence[np.ndarray]):
        if any(isinstance(v, (TorchBasis,)) or hasattr(v, "elem") for v in parent.coefficients.values()):
            raise ProblemError("patches of a problem with parameters on their own basis are not supported; "
                               "give such parameters as nodal or element values")
        self.parent = parent
        for attr in ("name", "basis", "mesh", "residual_integrand", "scheme", "storage_integrand",
                     "defaults", "coefficients"):
            setattr(self, attr, getattr(parent, attr))
        self._param_tbs = {}
        self._checked = set()
        self._read_names, self._warned_unused = set(), set()
        ed = parent._tb.element_dofs
        self.element_sets = [np.unique(np.asarray(e, dtype=np.int64)) for e in element_sets]
        self.local_dofs = [np.unique(ed[:, e]) for e in self.element_sets]
        sizes = [d.size for d in self.local_dofs]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self.union_to_global = np.concatenate(self.local_dofs) if self.local_dofs else np.zeros(0, np.int64)
        self.patch_of_dof = np.repeat(np.arange(len(sizes)), sizes)

        def renumber(k, glob):
            return np.searchsorted(self.local_dofs[k], glob) + self.offsets[k]

        cells = np.concatenate(self.element_sets)
        union_ed = np.concatenate([renumber(k, ed[:, e]) for k, e in enumerate(self.element_sets)], axis=1)
        self._tb = TorchBasisView(parent._tb, cells, union_ed)
        self._facets = []
        for ft in parent._facets:
            f_cells, f_ed = [], []
            for k, e in enumerate(self.element_sets):
                sel = np.nonzero(np.isin(ft.tb.element_index, e))[0]
                f_cells.append(sel)
                f_ed.append(renumber(k, ft.tb.element_dofs[:, sel]))
            view = TorchBasisView(ft.tb, np.concatenate(f_cells), np.concatenate(f_ed, axis=1))
            self._facets.append(_FacetTerm(ft.tag, ft.integrand, view, np.empty(0, dtype=np.int64)))
        self._A = None
        if parent._A is not None:
            import scipy.sparse as sp

            A = parent._A.tocsr()
            self._A = sp.block_diag([A[d][:, d] for d in self.local_dofs], format="coo")
        self._b = None if parent._b is None else parent._b[self.union_to_global]
        self._build_pattern()
        is_dir_parent = np.zeros(parent.n, dtype=bool)
        is_dir_parent[parent.dirichlet_dofs] = True
        self._build_dirichlet(is_dir_parent[self.union_to_global])
        self._dirichlet_params = parent._dirichlet_params  # the parent's Dirichlet data apply
        # position of each union Dirichlet DOF among the parent's Dirichlet DOFs
        self._dir_in_parent = np.searchsorted(parent.dirichlet_dofs, self.union_to_global[self.dirichlet_dofs])
        # rows whose whole element star lies in the patch: equal to the parent's rows
        star = np.zeros(parent.n, dtype=np.int64)
        np.add.at(star, ed.reshape(-1), 1)
        in_patch = np.zeros(self.n, dtype=np.int64)
        np.add.at(in_patch, union_ed.reshape(-1), 1)
        self.complete_rows = in_patch == star[self.union_to_global]

    # A Problem attribute that has no meaning on the union raises instead of being copied: the
    # parent's field table and Dirichlet entries hold the parent's DOF numbers
    # (tests/test_patch_union.py checks that every attribute a Problem sets is either set here
    # or listed in _PARENT_ONLY).
    _PARENT_ONLY = ("_fields", "_dirichlet")

    def __getattr__(self, name):
        if name in PatchUnion._PARENT_ONLY:
            raise ProblemError(f"{name.lstrip('_')!r} is defined on the parent problem, whose DOF numbers it holds, not "
                               "on its patch union; use union.parent (and union.union_to_global for the numbering)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def n_patches(self) -> int:
        return len(self.element_sets)

    @property
    def doflocs(self) -> np.ndarray:
        return self.parent.doflocs[:, self.union_to_global]

    def gather(self, u: torch.Tensor) -> torch.Tensor:
        """Parent DOF vectors ``(..., n_parent)`` to union vectors ``(..., n)`` (each patch's copy)."""
        return u.index_select(-1, torch.as_tensor(self.union_to_global, device=u.device))

    def parameter_kind(self, name, value, batch=None):
        # kinds are those of the parent: nodal values come on the parent's DOFs (then gathered)
        return self.parent.parameter_kind(name, value, batch=batch)

    def _params(self, params, device, dtype, batch=None):
        p = super()._params(params, device, dtype, batch)
        for k, v in p.items():
            if isinstance(v, torch.Tensor) and p.kinds.get(k) == "nodal":
                p[k] = self.gather(v)
        return p

    def dirichlet_values(self, params=None, *, t=None, batch: int = 1, device="cpu", dtype=torch.float64):
        g = self.parent.dirichlet_values(params, t=t, batch=batch, device=device, dtype=dtype)
        return g[:, torch.as_tensor(self._dir_in_parent, device=g.device)]


def _batched_ndim(kind) -> int:
    """Dimensions of a parameter of ``kind`` that carries a leading batch axis."""
    return 3 if kind == "quadrature" else 1 if kind == "constant" else 2


def _repeat_batch(v, B: int, reps: int, kind=None):
    """Repeat a parameter for ``reps`` levels of each of ``B`` samples (batch becomes B * reps)."""
    if not isinstance(v, torch.Tensor) or v.dim() == 0:
        return v
    if v.dim() < _batched_ndim(kind):
        return v  # no batch: shared by every sample and level
    if v.shape[0] == 1:
        v = v.expand(B, *v.shape[1:])
    return v.repeat_interleave(reps, dim=0)


def _n_args(f) -> int:
    import inspect

    try:
        return len(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        return 1


def _storage(storage):
    if storage is None:
        return None
    if storage == "mass":
        return _mass
    if callable(storage):
        return storage
    raise ProblemError(f"storage must be None, 'mass' or an integrand (u, v, w); got {storage!r}")


def _mass(*args):
    *fields, _w = args
    k = len(fields) // 2
    total = 0
    for u, v in zip(fields[:k], fields[k:]):
        prod = u.value * v.value
        extra = prod.dim() - 4  # component axes in front of (jet, batch, element, point)
        total = total + (prod.sum(tuple(range(extra))) if extra > 0 else prod)
    return total
