"""The evaluation a :class:`Problem` and a :class:`PatchUnion` share (:class:`WeakForm`)."""

from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from femoe.assembly.fields import FormParams
from femoe.assembly.form import (affine_parts, check_linear_in_test, local_from_coefficients, local_hessian,
                                 local_residual, local_residual_and_jacobian)
from femoe.assembly.torch_basis import TorchBasis, TorchBasisView
from femoe.errors import ProblemError, ShapeError, UnusedParameterWarning
from femoe.problem._dirichlet import DirichletRows
from femoe.problem._parameters import Params, batched_ndim, repeat_batch
from femoe.problem._pattern import SparsityPattern
from femoe.problem._scheme import ThetaScheme
from femoe.sparse import BatchedCSR

Integrand = Callable[..., torch.Tensor]


@dataclass
class FacetTerm:
    """A boundary integrand and the torch basis of the facets of its tag."""

    tag: str
    integrand: Integrand
    tb: TorchBasis


class WeakForm(abc.ABC):
    """A discrete weak form evaluated in torch: the residual ``R(u; p)``, its Jacobian on a
    :class:`SparsityPattern`, Dirichlet rows, theta-scheme steps and whole trajectories.

    It owns the evaluation and the bookkeeping of calls (which integrands were checked to be
    linear in the test function, which parameter names a form has read); what it evaluates it
    is given, built by its subclass, and holds by composition:

    - ``_tb``, ``_facets``: the torch basis of the cells and one :class:`FacetTerm` per
      boundary integrand;
    - ``_A``, ``_b``: a scikit-fem matrix and vector assembled once (``A u - b``; ``None``
      where absent);
    - ``_sparsity``: the :class:`SparsityPattern` (:attr:`pattern` is its CSR pattern);
    - ``_dirichlet_rows``: the :class:`DirichletRows` (:attr:`dirichlet_dofs`, :attr:`free_dofs`);
    - ``_parameters``: the :class:`ParameterKinds` (or a :class:`PatchParameters`);
    - ``scheme``: the :class:`ThetaScheme`.

    Subclasses: :class:`Problem`, built from the integrands and data of a PDE, and
    :class:`PatchUnion`, built from a parent problem and element patches. Each supplies the
    values ``g`` of its Dirichlet rows (:meth:`dirichlet_values`) and its DOF coordinates.
    """

    def __init__(self, *, name: str, basis, n: int, tb: TorchBasis, facets: list[FacetTerm], A, b,
                 residual: Integrand | None, storage: Integrand | None, scheme: ThetaScheme,
                 sparsity: SparsityPattern, dirichlet_rows: DirichletRows, parameters):
        self.name = name
        self.basis = basis
        self.mesh = basis.mesh
        self.n = int(n)
        self.residual_integrand = residual
        self.storage_integrand = storage
        self.scheme = scheme
        self._tb = tb
        self._facets = facets
        self._A = A
        self._b = b
        self._A_values = sparsity.matrix_values(A) if A is not None else None
        self._sparsity = sparsity
        self._dirichlet_rows = dirichlet_rows
        self._parameters = parameters
        self._checked: set[int] = set()
        # integrands found affine with a mesh-fixed derivative: (CSR values, residual at u = 0)
        self._affine: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._affine_probed: set[tuple] = set()
        self._read_names: set[str] = set()  # parameter names some form has read (see _warn_unused)
        self._warned_unused: set[str] = set()
        self._torch_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ what subclasses supply
    @property
    @abc.abstractmethod
    def doflocs(self) -> np.ndarray:
        """DOF coordinates ``(dim, n)``."""

    @abc.abstractmethod
    def dirichlet_values(self, params=None, *, t=None, batch: int = 1, device="cpu",
                         dtype=torch.float64) -> torch.Tensor:
        """Values ``g`` on :attr:`dirichlet_dofs`, shape ``(B, n_dirichlet)``."""

    @property
    def dirichlet_depends_on_time(self) -> bool:
        """Whether :meth:`dirichlet_values` depends on ``t`` (True unless a subclass knows it
        does not: then a trajectory's rows take the values once for all its levels)."""
        return True

    # ------------------------------------------------------------------ delegated data
    @property
    def pattern(self):
        """The :class:`~femoe.sparse.CSRPattern` of the Jacobian (of :class:`SparsityPattern`)."""
        return self._sparsity.csr

    @property
    def dirichlet_dofs(self) -> np.ndarray:
        """DOFs with Dirichlet rows ``u_i - g_i``, ascending."""
        return self._dirichlet_rows.dofs

    @property
    def free_dofs(self) -> np.ndarray:
        """The other DOFs, ascending."""
        return self._dirichlet_rows.free

    @property
    def defaults(self) -> Mapping[str, Any]:
        """Default parameter values, overridden by the ``params`` of each call."""
        return self._parameters.defaults

    @property
    def coefficients(self) -> Mapping[str, Any]:
        """Declared parameter kinds (see :meth:`parameter_kind`)."""
        return self._parameters.coefficients

    @property
    def theta(self) -> float:
        """The theta of :attr:`scheme` (a :class:`ThetaScheme`)."""
        return self.scheme.theta

    @property
    def is_time_dependent(self) -> bool:
        return self.storage_integrand is not None

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
        parameter could mean and how to declare it. (A patch union reads kinds like its parent:
        nodal values are given on the parent's DOFs.)
        """
        return self._parameters.kind(name, value, batch=batch)

    def _boundary(self, tag: str) -> np.ndarray:
        return boundary_facets(self.mesh, tag)

    def _tensors(self, device, dtype) -> dict[str, torch.Tensor]:
        """The index and value arrays of the pieces on ``device`` (once per device and dtype)."""
        key = (str(torch.device(device)), dtype)
        if key not in self._torch_cache:
            rows = self._dirichlet_rows
            t = {
                "cell_index": torch.as_tensor(self._sparsity.cell_index, device=device),
                "dir_keep": torch.as_tensor(~rows.in_row, device=device),
                "dir_diag": torch.as_tensor(rows.diag, dtype=dtype, device=device),
                "dirichlet": torch.as_tensor(rows.dofs, device=device),
            }
            for i, index in enumerate(self._sparsity.facet_index):
                t[f"facet_index_{i}"] = torch.as_tensor(index, device=device)
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

    def _params(self, params: Mapping[str, Any] | None, device, dtype, batch: int | None = None) -> Params:
        return self._parameters.collect(params, device, dtype, batch)

    def _kind(self, p, name, value):
        return self._parameters.resolve(p, name, value)

    def _form_params(self, tb: TorchBasis, params: dict, B: int, device, dtype, t) -> FormParams:
        return self._parameters.form_params(tb, params, B, device, dtype, t)

    def _note_reads(self, w: FormParams) -> None:
        self._read_names.update(w.read)

    def _warn_unused(self, p) -> None:
        """Warn (once per name) about parameters given in a call that nothing has read."""
        read, warned = self._read_names, self._warned_unused
        unused = [k for k in p if k not in read and k not in self._parameters.dirichlet_sizes
                  and k not in self.defaults and k not in warned]
        if unused and (self.residual_integrand is not None or self._facets):
            warned.update(unused)
            warnings.warn(
                f"problem {self.name!r}: parameter(s) {unused} were given but no form or Dirichlet value "
                f"reads them (forms read {sorted(n for n in read if n not in ('x', 'h', 'n', 't'))}), so the "
                "result does not depend on them; check the name (w.<name> in the form, or the parameter "
                "named in dirichlet=...)", UnusedParameterWarning, stacklevel=3)

    # ------------------------------------------------------------------ evaluation
    def _check(self, integrand, tb, jets, w):
        if id(integrand) not in self._checked:
            check_linear_in_test(integrand, tb, jets[:, :1].detach(), w)
            self._checked.add(id(integrand))

    def _term(self, integrand, tb: TorchBasis, index: torch.Tensor, u: torch.Tensor, params: dict, t,
              jacobian: bool, create_graph: bool):
        """One integrand's global residual ``(B, n)`` and CSR values ``(B, nnz)`` (or None).

        An integrand that is affine in ``u`` with a derivative the mesh fixes (it reads only the
        geometry: :func:`~femoe.assembly.form.affine_parts`, probed at its first evaluation) is
        assembled once, as a matrix on the pattern and its residual at ``u = 0``, and evaluated as
        ``K u + r(0)`` from then on, that first call included (so every evaluation of it rounds
        alike): a diffusion or mass term is not linearised again at every call."""
        B, device, dtype = u.shape[0], u.device, u.dtype
        key = _term_key(integrand, tb, u)
        if key not in self._affine_probed:
            self._affine_probed.add(key)
            self._probe_affine(key, integrand, tb, index, u, params, t)
        fixed = self._affine.get(key)
        if fixed is not None:
            kv, r0 = fixed
            R = BatchedCSR(self.pattern, kv.unsqueeze(0)).matvec(u) + r0
            return R, (kv.expand(B, -1) if jacobian else None)
        w = self._form_params(tb, params, B, device, dtype, t)
        jets = tb.jets(u)
        self._check(integrand, tb, jets, w)
        if jacobian:
            r, K = local_residual_and_jacobian(integrand, tb, jets, w, create_graph)
            vals = self._on_pattern(K, index)
        else:
            r, vals = local_residual(integrand, tb, jets, w), None
        self._note_reads(w)
        return tb.scatter(r, self.n), vals

    def _probe_affine(self, key, integrand, tb: TorchBasis, index: torch.Tensor, u: torch.Tensor, params: dict,
                      t) -> None:
        """Assemble ``integrand`` once (its CSR values and residual at ``u = 0``) if it is affine
        with a derivative the mesh fixes; probed at the states of its first call, ``u``."""
        B = u.shape[0]
        w = self._form_params(tb, params, B, u.device, u.dtype, t)
        jets = tb.jets(u.detach())
        self._check(integrand, tb, jets, w)
        # all states: w may hold per-state entries; a parameter may shadow a geometry name
        parts = affine_parts(integrand, tb, jets, w, parameters=frozenset(params))
        self._note_reads(w)
        if parts is None:
            return
        c0, D = parts  # the same at every state: state 0's are assembled
        r0, K = local_from_coefficients(tb.tensors(u.device, u.dtype), c0[:, :1], D[:, :, :1])
        kv = u.new_zeros(self.pattern.nnz).index_add(0, index, K.reshape(-1))
        self._affine[key] = (kv, tb.scatter(r0, self.n)[0])

    def _spatial_terms(self, tc: dict) -> list[tuple]:
        """``(integrand, TorchBasis, index of its local entries on the pattern)`` of the spatial
        term's integrands: the cell integrand, then each facet term's."""
        terms = [(self.residual_integrand, self._tb, tc["cell_index"])] if self.residual_integrand is not None else []
        return terms + [(ft.integrand, ft.tb, tc[f"facet_index_{i}"]) for i, ft in enumerate(self._facets)]

    def _on_pattern(self, K: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Local matrices ``K`` ``(B, nel, n_local, n_local)`` summed into CSR values ``(B, nnz)``
        (``index``: their entries' positions on the pattern)."""
        B = K.shape[0]
        return K.new_zeros(B, self.pattern.nnz).index_add(1, index, K.reshape(B, -1))

    def _spatial(self, u: torch.Tensor, params: dict, t, jacobian: bool, create_graph: bool):
        """``A(u)`` (no Dirichlet treatment): global residual and CSR values (or None)."""
        B, device, dtype = u.shape[0], u.device, u.dtype
        tc = self._tensors(device, dtype)
        R = u.new_zeros(B, self.n)
        vals = u.new_zeros(B, self.pattern.nnz) if jacobian else None
        for integrand, tb, index in self._spatial_terms(tc):
            r, v = self._term(integrand, tb, index, u, params, t, jacobian, create_graph)
            R = R + r
            if jacobian:
                vals = vals + v
        if self._A is not None:
            A = BatchedCSR(self.pattern, tc["A_values"].unsqueeze(0))
            R = R + A.matvec(u)
            if jacobian:
                vals = vals + tc["A_values"]
        if self._b is not None:
            R = R - tc["b"]
        return R, vals

    def _storage(self, u, params, t, jacobian, create_graph):
        tc = self._tensors(u.device, u.dtype)
        return self._term(self.storage_integrand, self._tb, tc["cell_index"], u, params, t, jacobian, create_graph)

    def _apply_dirichlet(self, R, vals, u, params, t):
        tc = self._tensors(u.device, u.dtype)
        if self.dirichlet_dofs.size:
            g = self.dirichlet_values(params, t=t, batch=u.shape[0], device=u.device, dtype=u.dtype)
            R = R.index_copy(1, tc["dirichlet"], u[:, tc["dirichlet"]] - g)
            if vals is not None:
                vals = vals * tc["dir_keep"] + tc["dir_diag"]
        return R, vals

    def _param_batches(self, p: Params) -> dict[str, int]:
        """The batch each parameter tensor carries (1 when it has none)."""
        out = {}
        for k, v in p.items():
            if not isinstance(v, torch.Tensor):
                continue
            out[k] = int(v.shape[0]) if v.dim() >= batched_ndim(p.kinds[k]) else 1
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

    def _level_states(self, levels: torch.Tensor, dt: float, p: Params, t0: float):
        """The levels ``(B, T + 1, n)`` as one batch of states ``(B (T + 1), n)`` (level-major within
        a sample), with each state's parameters (a sample's repeated over its levels) and time
        ``t0 + l dt``."""
        B, L, n = levels.shape
        p_rep = Params({k: repeat_batch(v, B, L, p.kinds.get(k)) for k, v in p.items()})
        p_rep.kinds = p.kinds
        t_flat = (t0 + dt * torch.arange(L, dtype=levels.dtype, device=levels.device)).repeat(B)
        return levels.reshape(B * L, n), p_rep, t_flat

    def _levels(self, levels: torch.Tensor, dt: float, p: Params, t0: float, jacobian: bool, create_graph: bool):
        """Storage ``S`` and spatial term ``A`` of every level ``(B, T + 1, n)`` in one batched
        evaluation (levels at ``t0 + l dt``), with their CSR values ``(B (T + 1), nnz)`` if asked."""
        B, L, n = levels.shape
        flat, p_rep, t_flat = self._level_states(levels, dt, p, t0)
        S, Sv = self._storage(flat, p_rep, t_flat, jacobian, create_graph)
        A, Av = self._spatial(flat, p_rep, t_flat, jacobian, create_graph)
        return S.reshape(B, L, n), Sv, A.reshape(B, L, n), Av

    def _steps(self, S: torch.Tensor, A: torch.Tensor, levels: torch.Tensor, dt: float, p: Params,
               t0: float) -> torch.Tensor:
        """The theta-scheme rows ``(B, T, n)`` of steps ``1..T`` from the levels' ``S`` and ``A``,
        Dirichlet rows ``u - g(t)``."""
        R = self.scheme.rows(S[:, 1:], S[:, :-1], A[:, 1:], A[:, :-1], dt)
        if self.dirichlet_dofs.size:
            B, T = R.shape[0], R.shape[1]
            d = torch.as_tensor(self.dirichlet_dofs, device=R.device)
            if self.dirichlet_depends_on_time:
                g = torch.stack([self.dirichlet_values(p, t=t0 + dt * (k + 1), batch=B, device=R.device,
                                                       dtype=R.dtype) for k in range(T)], dim=1)
            else:
                g = self.dirichlet_values(p, t=t0 + dt, batch=B, device=R.device, dtype=R.dtype).unsqueeze(1)
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

    def trajectory_hessian(self, U: torch.Tensor, rbar: torch.Tensor, dt: float, params=None, *,
                           t0: float = 0.0) -> BatchedCSR | None:
        """The Hessian of ``rbar . R(U)`` with respect to the levels ``U`` ``(B, T + 1, n)``, for
        :meth:`trajectory_residual`'s rows ``R`` ``(B, T, n)`` weighted by ``rbar`` ``(B, T, n)``:
        block diagonal over the levels (each term reads one level), one matrix on the pattern per
        level, batch ``B (T + 1)`` level-major as :meth:`level_jacobians`; None when every term is
        linear in ``u``. Not differentiable.

        The rows are linear in every level's storage and spatial terms ``S(u^l)``, ``A(u^l)``
        (Dirichlet rows hold no term), so ``rbar . R = sum_l rho_S^l . S(u^l) + rho_A^l . A(u^l)``,
        with the weights ``rho`` the rows' adjoint (a vector-Jacobian product of the scheme's rows,
        which costs a few vector operations). Each nonlinear integrand then gives its local Hessians
        at its own weights (:func:`~femoe.assembly.form.local_hessian`); terms found affine
        (assembled once) have none."""
        self._need_time()
        if U.dim() != 3 or U.shape[-1] != self.n or U.shape[1] < 2:
            raise ShapeError(f"U must have shape (batch, T + 1 >= 2, {self.n}); got {tuple(U.shape)}")
        B, L, n = U.shape
        if tuple(rbar.shape) != (B, L - 1, n):
            raise ShapeError(f"rbar must have the rows' shape (batch, T, n) = {(B, L - 1, n)}; got {tuple(rbar.shape)}")
        U = U.detach()
        p = self._params(params, U.device, U.dtype, batch=B)
        with torch.enable_grad():
            S = U.new_zeros(B, L, n).requires_grad_(True)
            A = U.new_zeros(B, L, n).requires_grad_(True)
            R = self._steps(S, A, U, dt, p, t0)
            rho_S, rho_A = torch.autograd.grad((R * rbar.detach()).sum(), (S, A), allow_unused=True)
        tc = self._tensors(U.device, U.dtype)
        flat, p_rep, t_flat = self._level_states(U, dt, p, t0)
        terms = [(self.storage_integrand, self._tb, tc["cell_index"], rho_S)]
        terms += [(*term, rho_A) for term in self._spatial_terms(tc)]
        vals = None
        for integrand, tb, index, rho in terms:
            if rho is None or _term_key(integrand, tb, U) in self._affine:
                continue
            w = self._form_params(tb, p_rep, B * L, U.device, U.dtype, t_flat)
            K = local_hessian(integrand, tb, tb.jets(flat), rho.reshape(B * L, n), w)
            if K is not None:
                vals = self._on_pattern(K, index) if vals is None else vals + self._on_pattern(K, index)
        return None if vals is None else BatchedCSR(self.pattern, vals)


def _term_key(integrand, tb: TorchBasis, u: torch.Tensor) -> tuple:
    """The key of an integrand on a basis for states like ``u`` in the record of affine terms."""
    return id(integrand), id(tb), str(u.device), u.dtype


def boundary_facets(mesh, tag: str) -> np.ndarray:
    """The facets of boundary ``tag`` of ``mesh``; raises where the tag is unknown or empty."""
    bnd = getattr(mesh, "boundaries", None) or {}
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


def storage_integrand(storage) -> Integrand | None:
    """The storage integrand of ``storage``: ``None``, ``"mass"`` (``u * v``, summed over fields
    and components) or an integrand as it is."""
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
