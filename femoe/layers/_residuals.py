"""Residual models: the rows a constraint layer enforces, as functions of a local field.

A constraint layer in basis mode sees a field ``u = B w`` on a set of DOFs ``L`` (all DOFs for
one expert; an expert's owned + halo DOFs in the mixture of experts) and enforces a set of
residual rows ``O``. A *residual model* (a :class:`ResidualModel`) packages that choice for the
least-squares core (:func:`femoe.layers.least_squares_solve`), which needs two things from it
(and uses the optional hooks :meth:`ResidualModel.curvature` and
:meth:`ResidualModel.basis_adjoint` where a model has them):

``residual(u, p) -> r``
    ``(batch, m)`` residual rows for local fields ``u`` (``(batch, n_L)``, or
    ``(batch, T + 1, n_L)`` for trajectories), twice differentiable in ``u`` and in the
    parameter tensors of ``p``.
``linearize(u, B, p) -> (r, J_w)``
    the same rows and ``J_w = dr/du B`` of shape ``(batch, m, N)``, from the sparse Jacobian;
    differentiable when its inputs require grad (used by the unrolled reference backward).

The MoE layer implements the same two methods with the expert index folded into the batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from femoe.errors import ProblemError, ShapeError
from femoe.layers._state import INITIAL
from femoe.layers._validate import as_index
from femoe.linalg._base import block_diagonal_indices, csr_operator
from femoe.problem import Problem
from femoe.sparse import BatchedCSR, CSRPattern


def jac_times(J: BatchedCSR, X: torch.Tensor) -> torch.Tensor:
    """``J_b @ X_b`` for ``X`` of shape ``(batch, n, k)``.

    Without gradients one block-diagonal CSR product: on the CPU SciPy's at every size (with the
    basis' N = 64 columns torch's CSR kernel took 3.0x as long at 204 blocks of 129 rows and 5.3x
    at 404 blocks of 1,025, one thread; 1.3x and 3.4x at two threads; the same result bitwise:
    ``benchmarks/bench_spmm.py``), torch's elsewhere. A differentiable gather/scatter (memory
    ``batch * nnz * k``) when ``J.values`` or ``X`` require grad.
    """
    if torch.is_grad_enabled() and (J.values.requires_grad or X.requires_grad):
        rows = torch.as_tensor(J.pattern.rows, device=X.device)
        cols = torch.as_tensor(J.pattern.indices, device=X.device)
        prod = J.values[:, :, None] * X[:, cols, :]
        return prod.new_zeros(prod.shape[0], J.pattern.shape[0], X.shape[-1]).index_add(1, rows, prod)
    return csr_operator(J.pattern, J.values.detach(), scipy_max_nnz=None)(X.detach())


def block_csr_product(vals: torch.Tensor, indptr: np.ndarray, cols: np.ndarray, n_cols: int, X: torch.Tensor,
                      cache: dict) -> torch.Tensor:
    """``M_b X_b`` per sample (no gradient), for sparse ``M_b`` ``(m, n_cols)`` of one structure
    (CSR ``indptr``, ``cols``) with the sample's entries ``vals[b]`` ``(batch, e)``, and ``X``
    ``(batch, ..., N)`` with ``n_cols`` rows per sample: one block-diagonal SpMM, ``(batch, m, N)``.
    ``cache`` keeps the block structure per batch size and device."""
    vals = vals.detach()
    batch, N = vals.shape[0], X.shape[-1]
    dev = vals.device
    m = indptr.size - 1
    bkey = ("block", batch, str(dev))
    if bkey not in cache:
        crow, col = block_diagonal_indices(indptr, cols, n_cols, batch)
        cache[bkey] = (crow, col) if dev.type == "cpu" else (torch.as_tensor(crow, device=dev),
                                                              torch.as_tensor(col, device=dev))
    crow, col = cache[bkey]
    X = X.detach().reshape(batch * n_cols, N)
    if dev.type == "cpu":
        M = sp.csr_matrix((vals.reshape(-1).numpy(), col, crow), shape=(batch * m, batch * n_cols))
        return torch.from_numpy(np.ascontiguousarray(M @ X.contiguous().numpy())).reshape(batch, m, N)
    M = torch.sparse_csr_tensor(crow, col, vals.reshape(-1), (batch * m, batch * n_cols), check_invariants=False)
    return (M @ X).reshape(batch, m, N)


def _detached(p: Mapping[str, Any]) -> dict:
    """``p`` with its tensors detached (for second derivatives that are not differentiated)."""
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in p.items()}


def basis_field(B: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``u = B w`` for ``B`` of shape ``(batch, ..., n, N)`` and ``w`` of shape ``(batch, N)``."""
    shape = (w.shape[0],) + (1,) * (B.dim() - 3) + (w.shape[1], 1)
    return (B @ w.reshape(shape)).squeeze(-1)


def basis_adjoint_parts(B: torch.Tensor, w: torch.Tensor, a: torch.Tensor, M, MT, HB: torch.Tensor | None,
                        shape: torch.Size):
    """``(S, vjp)`` of a ``basis_adjoint`` (see :meth:`TrajectoryResidual.basis_adjoint`) from the
    basis ``B`` ``(batch, k, N)`` flattened over the field's entries, ``w*``, ``a = M^T r*``, the
    products ``M`` and ``M^T`` of the rows' Jacobian with respect to the field, and ``H_r B``
    (``None`` for a residual linear in the field; with ``h <= k`` rows: ``H_r`` is zero past
    ``B``'s first ``h`` rows, as on the experts' global initial rows): ``S = B^T H_r B`` and
    ``vjp(v) = -(a v^T + (M^T M B v + H_r B v) w*^T)`` reshaped to ``shape`` (the layer's basis)."""
    h = None if HB is None else HB.shape[1]
    S = B.new_zeros(B.shape[0], B.shape[-1], B.shape[-1]) if HB is None else B[:, :h].transpose(1, 2) @ HB

    def vjp(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            c2 = MT(M((B @ v.unsqueeze(-1)).squeeze(-1)))
            if HB is not None:
                c2[:, :h] += (HB @ v.unsqueeze(-1)).squeeze(-1)
            # the two rank-one terms as one (k x 2) (2 x N) product: one basis-sized result, not four
            left = torch.stack([a, c2], dim=-1)
            right = torch.stack([v, w], dim=1)
            return torch.bmm(left, right).neg_().reshape(shape)

    return S, vjp


def distance2_colouring(pattern: CSRPattern) -> np.ndarray:
    """Greedy colouring of the columns of ``pattern`` such that no two columns of one colour
    have an entry in the same row (cached on the pattern).

    A symmetric matrix ``H`` on this pattern is then recovered from one product ``H v_c`` per
    colour, ``v_c`` the indicator of colour ``c``: ``H[i, j] = (H v_{colour(j)})[i]``.
    """
    cache = pattern.__dict__.setdefault("_layers_cache", {})
    if "colouring" not in cache:
        n = pattern.shape[1]
        A = sp.csr_matrix((np.ones(pattern.nnz, dtype=np.int8), pattern.indices, pattern.indptr), shape=pattern.shape)
        conflict = (A.T @ A).tocsr()
        colours = np.full(n, -1, dtype=np.int64)
        indptr, indices = conflict.indptr, conflict.indices
        for j in range(n):
            used = colours[indices[indptr[j]:indptr[j + 1]]]
            free = np.ones(used.size + 2, dtype=bool)
            free[used[(used >= 0) & (used < free.size)]] = False
            colours[j] = int(np.argmax(free))
        cache["colouring"] = colours
    return cache["colouring"]


def energy_matrix(problem: Problem, params: Mapping[str, Any] | None, like: torch.Tensor) -> torch.Tensor:
    """``K(p)`` ``(batch, n, n)``, dense: the problem's Jacobian at ``u = 0`` for the parameters
    ``p``, Dirichlet rows and columns replaced by the identity, symmetrised (in ``like``'s dtype and
    device; differentiable with respect to the parameters)."""
    n = problem.n
    _, J = problem.residual_and_jacobian(like.new_zeros(1, n), dict(params or {}))
    pat, vals = problem.pattern, J.values.to(like.dtype)
    b = vals.shape[0]
    rows = torch.as_tensor(pat.rows, device=like.device)
    cols = torch.as_tensor(pat.indices, device=like.device)
    K = vals.new_zeros(b, n, n).index_put((torch.arange(b, device=like.device)[:, None], rows[None, :], cols[None, :]),
                                         vals, accumulate=True)
    keep = torch.ones(n, dtype=like.dtype, device=like.device)
    keep[torch.as_tensor(problem.dirichlet_dofs, device=like.device)] = 0.0
    K = K * keep[:, None] * keep[None, :] + torch.diag(1.0 - keep)
    return 0.5 * (K + K.transpose(1, 2))


def _cholesky(K: torch.Tensor, what: str) -> torch.Tensor:
    """Lower Cholesky factors of the symmetric matrices ``K`` ``(..., m, m)``; raises
    :class:`ProblemError` naming ``what`` where one is not positive definite."""
    L, info = torch.linalg.cholesky_ex(K)
    if bool((info != 0).any()):
        where = tuple(int(i) for i in (info != 0).nonzero()[0])
        raise ProblemError(f"energy rows: {what} (batch index {where}) is not symmetric positive definite once its "
                           "Dirichlet rows are eliminated, so it defines no energy norm; use row weights 'mass' or "
                           "'boundary'")
    return L


def energy_factor(problem: Problem, params: Mapping[str, Any] | None, like: torch.Tensor) -> torch.Tensor:
    """Cholesky factors ``L`` ``(batch, n, n)`` of :func:`energy_matrix` ``K(p) = L L^T``. Raises
    :class:`ProblemError` where ``K(p)`` is not symmetric positive definite."""
    return _cholesky(energy_matrix(problem, params, like), f"the Jacobian of {problem.name!r} at u = 0")


class RowTransform:
    """Rows ``r -> L^{-1} (s r)``: a fixed lower-triangular ``L`` ``(n, n)`` after row weights
    ``s`` ``(n,)``, applied along the row axis of ``(batch, n)`` rows or ``(batch, n, N)``
    Jacobians; differentiable (triangular solves).

    With ``K0 = L L^T`` symmetric positive definite (an energy inner product, e.g. the stiffness
    matrix; :func:`femoe.train.rows.energy_rows`), ``||L^{-1} r||^2 = r^T K0^{-1} r``: the residual
    measured in the dual (energy) norm. For ``R(u) = K0 u - f`` that is ``||u - u*||_{K0}^2``, the
    error itself in the energy norm, where the mass-scaled rows ``R_i / M_ii`` (pointwise
    strong residuals) weigh an error mode by the square of its eigenvalue: a least-squares fit
    of those rows keeps smooth errors that the energy rows remove."""

    def __init__(self, L: np.ndarray | None, s: np.ndarray | None = None, n: int | None = None):
        if L is not None:
            L = np.asarray(L, dtype=np.float64)
            if L.ndim != 2 or L.shape[0] != L.shape[1]:
                raise ShapeError(f"a row transform needs a square lower-triangular matrix; got shape {L.shape}")
        self.n = L.shape[0] if L is not None else int(n)
        self.L = None if L is None else torch.as_tensor(np.tril(L))
        self.s = None if s is None else torch.as_tensor(np.asarray(s, dtype=np.float64))

    def factor(self, p: Mapping[str, Any] | None, like: torch.Tensor) -> torch.Tensor:
        """``L`` ``(n, n)`` in ``like``'s dtype and device (``p``: the parameters, unused here)."""
        return self.L.to(like.device, like.dtype)

    def _weighted(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.s is None else x * self.s.to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 2)))

    def __call__(self, x: torch.Tensor, p: Mapping[str, Any] | None = None) -> torch.Tensor:
        """``x`` ``(batch, n)`` or ``(batch, n, N)`` -> the same shape."""
        L = self.factor(p, x)
        y = self._weighted(x)
        if L.dim() == 3:  # one factor per sample: a batched solve
            L = L.expand(y.shape[0], -1, -1)
            z = torch.linalg.solve_triangular(L, y if y.dim() == 3 else y.unsqueeze(-1), upper=False)
            return z if y.dim() == 3 else z.squeeze(-1)
        # one factor: a single solve with every sample (and column) as a right-hand side
        cols = y.movedim(1, -1).reshape(-1, self.n).T  # (n, batch [N])
        z = torch.linalg.solve_triangular(L, cols, upper=False).T
        return z.reshape(*y.movedim(1, -1).shape).movedim(-1, 1)

    def for_experts(self, union, rows_union: Sequence[np.ndarray], rows_global: Sequence[np.ndarray]) -> "RowTransform":
        """The transform of a mixture of experts' union problem, whose expert ``k`` enforces the
        union rows ``rows_union[k]`` (the parent's rows ``rows_global[k]``). A general ``L``
        couples rows of different experts, which no expert could evaluate on its own: only
        energy rows (:class:`EnergyRows`) have an expert-local form."""
        raise ProblemError("this row transform couples the rows of different experts, so the mixture of experts "
                           "cannot apply it; use energy rows (femoe.train.rows.energy_rows) or row weights")


class EnergyRows(RowTransform):
    """Energy rows of a fixed reference operator: ``L`` the Cholesky factor of
    :func:`energy_matrix` at the parameters ``params`` (:func:`femoe.train.rows.energy_rows`:
    every coefficient at its default, 1 where it has none)."""

    def __init__(self, problem: Problem, params: Mapping[str, Any], s: np.ndarray | None = None):
        L = energy_factor(problem, params, torch.zeros((), dtype=torch.float64))[0]
        super().__init__(L.numpy(), s)
        self.problem = problem
        self.params = dict(params)

    def for_experts(self, union, rows_union, rows_global) -> "BlockEnergyRows":
        """The experts' (additive Schwarz) form of these rows: :class:`BlockEnergyRows` with the
        same operator (``params``; ``None``: each sample's own)."""
        s = None if self.s is None else self.s.numpy()[np.asarray(union.union_to_global)]
        return BlockEnergyRows(self.problem, union, rows_union, rows_global, s, self.params)


class _ValueCache:
    """The last factor computed from parameter tensors, reused while their values equal the last
    ones' (compared, not identified: the iterations of one solve, the loss of one step) and none
    needs a gradient; recomputed (with its graph) otherwise."""

    def __init__(self):
        self._last = None

    def get(self, p: Mapping[str, Any] | None, like: torch.Tensor, build) -> torch.Tensor:
        tensors = {k: v for k, v in (p or {}).items() if isinstance(v, torch.Tensor)}
        grad_needed = torch.is_grad_enabled() and any(v.requires_grad for v in tensors.values())
        if not grad_needed and self._last is not None:
            old, where, L = self._last
            if where == (str(like.device), like.dtype) and old.keys() == tensors.keys() and all(
                    old[k].shape == v.shape and torch.equal(old[k], v.detach()) for k, v in tensors.items()):
                return L
        L = build(p, like)
        if not grad_needed:
            values = {k: v.detach().clone() for k, v in tensors.items()}
            self._last = (values, (str(like.device), like.dtype), L.detach())
        return L


class SampleEnergyRows(RowTransform):
    """Energy rows of each sample's own operator: ``r -> L_p^{-1} (s r)`` with ``L_p`` from
    :func:`energy_factor` for that sample's parameters ``p``, so that for a linear problem
    ``||L_p^{-1} R||^2`` is the sample's energy error exactly. One dense Cholesky factor per
    sample, cached by value (:class:`_ValueCache`)."""

    params = None  # each sample's own operator
    for_experts = EnergyRows.for_experts

    def __init__(self, problem: Problem, s: np.ndarray | None = None):
        super().__init__(None, s, n=problem.n)
        self.problem = problem
        self._cache = _ValueCache()

    def factor(self, p: Mapping[str, Any] | None, like: torch.Tensor) -> torch.Tensor:
        return self._cache.get(p, like, lambda q, x: energy_factor(self.problem, q, x))


class BlockEnergyRows(RowTransform):
    """Energy rows of a mixture of experts, one block per expert (additive Schwarz).

    Expert ``k`` enforces the parent's rows ``O_k`` (its own DOFs' rows and the global boundary
    rows). Its rows are ``L_k^{-1} (s r)_{O_k}`` with ``K[O_k, O_k] = L_k L_k^T``: the block of the
    energy operator ``K`` (:func:`energy_matrix`, Dirichlet rows eliminated) on those rows, i.e.
    the stiffness of expert ``k``'s subdomain with every other DOF held at zero. For a linear
    problem ``R(u) = K u - f``, ``||L_k^{-1} R_{O_k}||^2`` is the energy error of ``u`` against the
    solution of the subdomain's Dirichlet problem with ``u``'s own values on the rest of the mesh,
    and the sum over experts is ``R^T P_AS R`` with ``P_AS = sum_k E_k K_kk^{-1} E_k^T`` the
    one-level additive Schwarz preconditioner: a norm equivalent to the global energy rows'
    ``R^T K^{-1} R`` that each expert evaluates from its own rows. Union rows no expert enforces
    are passed through weighted only (no expert reads them).

    Parameters
    ----------
    problem : Problem
        The parent problem (the blocks are cut from its ``K``).
    union : PatchUnion
        The experts' union problem (the rows this transform acts on: ``union.n``).
    rows_union, rows_global : sequence of int arrays
        Expert ``k``'s enforced rows in union numbering (sorted, inside its patch) and the same
        rows in the parent's numbering.
    s : array, optional
        Row weights on the union's DOFs (Dirichlet weight).
    params : mapping, optional
        Fixed parameters of the reference operator; ``None``: each sample's own (one factor per
        sample and expert, cached by value).
    """

    def __init__(self, problem: Problem, union, rows_union: Sequence[np.ndarray], rows_global: Sequence[np.ndarray],
                 s: np.ndarray | None = None, params: Mapping[str, Any] | None = None):
        super().__init__(None, s, n=union.n)
        self.problem = problem
        self.params = None if params is None else dict(params)
        K, m = len(rows_union), max(int(np.size(r)) for r in rows_union)
        idx = np.zeros((K, m), dtype=np.int64)
        gidx = np.zeros((K, m), dtype=np.int64)
        mask = np.zeros((K, m), dtype=bool)
        for k, (ru, rg) in enumerate(zip(rows_union, rows_global)):
            ru, rg = np.asarray(ru), np.asarray(rg)
            if ru.shape != rg.shape or np.any(np.diff(ru) <= 0):
                raise ShapeError(f"expert {k}: its union rows must be sorted and match its parent rows one to one")
            idx[k, : ru.size], gidx[k, : rg.size], mask[k, : ru.size] = ru, rg, True
        if np.unique(idx[mask]).size != int(mask.sum()):
            raise ShapeError("two experts share a union row; each expert's rows must lie in its own patch")
        self.idx, self.gidx, self.mask = torch.as_tensor(idx), torch.as_tensor(gidx), torch.as_tensor(mask)
        self._cache = _ValueCache()
        self._fixed = None

    def _build(self, p: Mapping[str, Any] | None, like: torch.Tensor) -> torch.Tensor:
        """``(batch, K, m, m)`` factors of the experts' blocks (padding: identity)."""
        Kd = energy_matrix(self.problem, p, like)
        g = self.gidx.to(like.device)
        Kb = Kd[:, g[:, :, None], g[:, None, :]]  # (batch, K, m, m)
        mk = self.mask.to(like.device, like.dtype)
        Kb = Kb * (mk[:, :, None] * mk[:, None, :]) + torch.diag_embed(1.0 - mk)
        return _cholesky(Kb, f"an expert's block of the Jacobian of {self.problem.name!r} at u = 0")

    def factor(self, p: Mapping[str, Any] | None, like: torch.Tensor) -> torch.Tensor:
        if self.params is None:
            return self._cache.get(p, like, self._build)
        if self._fixed is None:
            cpu = torch.zeros((), dtype=torch.float64)  # cpu: the factor is built once, then moved
            self._fixed = self._build(self.params, cpu)
        return self._fixed.to(like.device, like.dtype)

    def __call__(self, x: torch.Tensor, p: Mapping[str, Any] | None = None) -> torch.Tensor:
        """``x`` ``(batch, n_union)`` or ``(batch, n_union, N)`` -> the same shape."""
        y = self._weighted(x)
        L = self.factor(p, x)
        b, (K, m) = y.shape[0], self.idx.shape
        flat = self.idx.to(y.device).reshape(-1)
        sel = self.mask.to(y.device).reshape(-1)
        yb = y.index_select(1, flat).reshape(b, K, m, -1)
        yb = yb * self.mask.to(y.device, y.dtype).reshape(1, K, m, 1)
        z = torch.linalg.solve_triangular(L.expand(b, -1, -1, -1), yb, upper=False)  # (b, K, m, cols)
        z = z.reshape(b, K * m, *y.shape[2:])
        return y.index_copy(1, flat[sel], z[:, sel])


class TimeIntegratedRows:
    """Rows of a trajectory integrated in time (``solver.time_integrated_rows = true``).

    The theta-scheme rows of step ``l`` are ``R_l = S (u_l - u_{l-1}) / dt + theta A(u_l) +
    (1 - theta) A(u_{l-1})``; weighted by ``s`` (``1 / M_ii``: pointwise time derivatives) they
    measure how far ``u`` is from satisfying *one* step. These rows replace them by

        ``Y_l = dt * sum_{k <= l} s R_k = u_l - u_0 - dt sum_{k <= l} s [theta A(u_k) + (1 - theta) A(u_{k-1})]``

    (storage ``S`` lumped to ``M``): the scheme in integral (Picard) form, in the solution's own
    units. An error ``e`` that enters at step ``k`` and is carried to the end counts at every later
    level, as it does in the space-time L2 error, where the step rows count it once, at step
    ``k``; a least-squares fit of the step rows therefore spends the basis on late steps and
    leaves early errors that the whole trajectory inherits. The map is lower block-triangular
    with identity blocks times ``dt`` (invertible), so both sets of rows have the same zeros:
    the exact solution of the scheme is unchanged, only which member of a basis that cannot
    reach it the least squares picks.

    ``s`` are the row weights of the ``n`` DOFs (applied before the sum); the initial-condition
    rows are unchanged. Trajectories only; enforced rows must be the same DOFs at every level (all
    rows, or an expert's DOFs), so that each level's sum is over the rows of the same DOFs.
    """

    def __init__(self, s: Any):
        self.s = np.asarray(s, dtype=np.float64)
        if self.s.ndim != 1:
            raise ShapeError(f"time-integrated rows need one weight per DOF; got shape {self.s.shape}")

    def for_experts(self, union_to_global) -> "TimeIntegratedRows":
        """The same rows on a union of expert fields (``union_to_global``: each union DOF's parent DOF)."""
        return TimeIntegratedRows(self.s[np.asarray(union_to_global)])

    @staticmethod
    def integrate(x: torch.Tensor, T: int, dt: float, transpose: bool = False) -> torch.Tensor:
        """``x`` ``(batch, T k, ...)`` (level-major rows) -> ``dt`` times the cumulative sum over
        the levels (``transpose``: the adjoint, a reversed cumulative sum)."""
        y = x.reshape(x.shape[0], T, x.shape[1] // T, *x.shape[2:])
        y = y.flip(1).cumsum(1).flip(1) if transpose else y.cumsum(1)
        return (dt * y).reshape(x.shape)


def _row_scale(problem: Problem, row_scale: Any) -> torch.Tensor | RowTransform | None:
    """Weights of the PDE rows: ``"mass"`` (``1 / M_ii``, see :meth:`Problem.row_scale`), ``None``
    (the raw weak-form rows), an array of ``n`` weights, or a :class:`RowTransform`."""
    if row_scale is None:
        return None
    if isinstance(row_scale, TimeIntegratedRows):
        raise ProblemError(f"time-integrated rows apply to trajectories; problem {problem.name!r} is evaluated as a "
                           "steady residual here: use row weights ('mass', None or an array)")
    if isinstance(row_scale, RowTransform):
        if row_scale.n != problem.n:
            raise ShapeError(f"the row transform has {row_scale.n} rows but the problem has {problem.n}")
        return row_scale
    if isinstance(row_scale, str):
        if row_scale != "mass":
            raise ProblemError(f"row_scale must be 'mass', None or an array of {problem.n} weights; got {row_scale!r}")
        return torch.as_tensor(problem.row_scale())
    s = torch.as_tensor(row_scale, dtype=torch.float64)
    if s.shape != (problem.n,):
        raise ShapeError(f"row_scale must have shape ({problem.n},); got {tuple(s.shape)}")
    return s


def batched_param_names(problem: Problem, p: Mapping[str, Any], n_samples: int) -> frozenset | None:
    """The names of ``p``'s tensors that carry a sample axis of length ``n_samples``, read by the
    problem's parameter kinds (``INITIAL`` by its ``(batch, n)`` shape); ``None`` when a tensor is
    none of the problem's parameters (its batch axis is then unknown)."""
    from femoe.problem._parameters import batched_ndim

    out = set()
    named = {}
    for k, v in p.items():
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            continue
        if k == INITIAL:
            if v.dim() == 2 and v.shape[0] == n_samples:
                out.add(k)
        else:
            named[k] = v
    if named:
        v0 = next(iter(named.values()))
        try:
            kinds = problem._params(named, v0.device, v0.dtype, batch=n_samples).kinds
        except Exception:  # noqa: BLE001 - an unreadable parameter: no sample subsets
            return None
        for k, v in named.items():
            if k not in kinds:
                return None
            if v.dim() >= batched_ndim(kinds[k]) and v.shape[0] == n_samples:
                out.add(k)
    return frozenset(out)


def rows_sample_params(problem: Problem, scale: Any, p: Mapping[str, Any], n_samples: int,
                       holds_samples: bool = False) -> frozenset | None:
    """:meth:`ResidualModel.sample_params` of rows of ``problem`` weighted by ``scale``: the
    batched parameters (:func:`batched_param_names`); ``None`` with a row transform (energy rows),
    whose blocks are not split by sample, or when the model itself ``holds_samples`` (per-sample
    weights of its own, which a subset of the samples would not match)."""
    if isinstance(scale, RowTransform) or holds_samples:
        return None
    return batched_param_names(problem, p, n_samples)


class ResidualModel(ABC):
    """The rows a basis-mode layer least-squares, as functions of a local field (the contract of
    :func:`femoe.layers.least_squares_solve`; see the module docstring).

    ``p`` holds the problem's parameters under their names and the layer's state inputs (the
    initial condition of a trajectory, a coarse field, ...) under :class:`~femoe.layers._state.StateKey`
    keys (:mod:`femoe.layers._state`): both are differentiated alike, and a model passes the
    parameters alone on to its problem (:func:`~femoe.layers._state.parameters_only`).

    Subclasses implement the abstract :meth:`residual` and :meth:`linearize`. The other methods are optional
    hooks whose defaults say "not available"; the least-squares core then falls back to a slower
    exact path (autograd Hessian-vector products in ``w``, the double backward):

    - :meth:`prepare_curvature`: one-off set-up the two hooks below need;
    - :meth:`curvature`: ``B^T [d2/du2 (rbar . r(u))] B``, the second-order term of the exact
      Hessian of ``1/2 ||r(B w)||^2``;
    - :meth:`basis_adjoint`: that term together with ``(dG/dB)^T v`` (the implicit backward's
      product when only ``B`` needs a gradient), without differentiating the assembly.
    """

    time_dependent = False
    #: consecutive batch elements of one sample, evaluated together (a folded expert group: ``K``)
    elements_per_sample = 1

    @abstractmethod
    def residual(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        """``(batch, m)`` rows for local fields ``u``, twice differentiable in ``u`` and ``p``'s tensors."""

    def sample_params(self, p: Mapping[str, Any], n_samples: int) -> frozenset | None:
        """The names of ``p``'s tensors that carry the sample axis (of length ``n_samples``), so
        that the rows of a subset of the samples are those of the model on ``B``, the field and
        these tensors restricted to it (what lets the LM evaluate only the samples still active);
        ``None`` (the default): not available (every evaluation takes the whole batch)."""
        return None

    @abstractmethod
    def linearize(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows and ``J_w = dr/du B`` ``(batch, m, N)``."""

    def prepare_curvature(self) -> None:
        return None

    def curvature(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any],
                  rbar: torch.Tensor) -> torch.Tensor | None:
        """``(batch, N, N)``, or ``None``: not available."""
        return None

    def basis_adjoint(self, w: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any], r_star: torch.Tensor):
        """``(S, vjp)`` (see :meth:`TrajectoryResidual.basis_adjoint`), or ``None``: not available."""
        return None

    def zero_field_rows(self, B: torch.Tensor, p: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For rows about a fixed field ``c`` (``u = c + B w``): the rows and ``J_w`` at the zero
        field, ``u = 0``, which set the LM's scales (its relative tolerance and round-off floor),
        since at ``w = 0`` the rows are already near their optimum; ``None`` (default): the rows
        at ``w = 0`` set them."""
        return None

    def forget(self) -> None:
        """Drop what the model keeps from its last solve to reuse within it (linearisations,
        bases); the LM calls it as a solve starts. Between solves the parameters may change in
        ways a comparison cannot see (a float, a tensor a form's closure holds)."""
        return None

    def row_magnitude(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor | None:
        """``(batch, m)``: for each row, the sum of the magnitudes of the field's terms in it,
        ``sum_j |dr_i/du_j| |u_j|`` (row weights and the initial rows' weights included), the
        scale of the round-off of the computed row; ``None`` (default): not available. The LM's
        round-off floor counts it: where the rows nearly cancel (a field that nearly solves them,
        as about a fixed field) the terms are far larger than the rows, the weights or ``J_w``."""
        return None


class SteadyResidual(ResidualModel):
    """Rows ``rows`` of the steady residual ``R(u; p)`` for a field given on DOFs ``dofs``.

    Parameters
    ----------
    problem : Problem
        A steady problem (a time-dependent one is evaluated as ``A(u, t)`` at time ``t``).
    rows : index, optional
        Residual rows to enforce (default all ``n``, Dirichlet rows ``u_i - g_i`` included).
    dofs : index, optional
        DOFs the field lives on (default all); the field is zero elsewhere, so ``rows`` should
        depend on these DOFs only.
    t : float, optional
        Time passed to the forms.
    row_scale : ``"mass"``, None or array
        Weights of the rows: ``"mass"`` divides row ``i`` by ``M_ii`` (Dirichlet rows keep 1), so
        rows are pointwise residuals independent of the element size and the ridge ``rho`` means
        the same on every mesh (the paper's residuals are pointwise, at collocation points).
    """

    time_dependent = False

    def __init__(self, problem: Problem, rows: Any = None, dofs: Any = None, t: float | None = None,
                 row_scale: Any = "mass"):
        self.problem = problem
        self.n = problem.n
        self.scale = _row_scale(problem, row_scale)
        self.rows = as_index("rows", rows, self.n)
        self.dofs = as_index("dofs", dofs, self.n)
        self.n_local = self.n if self.dofs is None else int(self.dofs.numel())
        self.n_rows = self.n if self.rows is None else int(self.rows.numel())
        self.t = t

    def sample_params(self, p: Mapping[str, Any], n_samples: int) -> frozenset | None:
        """The batched parameters, so that the LM's trials evaluate only the samples still active:
        at the sorption term's kink a diffusion-sorption sample may take ten times the iterations
        of the others (``benchmarks/bench_step_parts.py``'s steps; :func:`rows_sample_params`)."""
        return rows_sample_params(self.problem, self.scale, p, n_samples, self.holds_samples())

    def holds_samples(self) -> bool:
        """Whether the model keeps per-sample data of its own (not in the parameters)."""
        return False

    def _embed(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        if self.dofs is None:
            return x
        shape = list(x.shape)
        shape[axis] = self.n
        return x.new_zeros(shape).index_copy(axis, self.dofs.to(x.device), x)

    def _select(self, x: torch.Tensor, p: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Scale the PDE rows (axis 1: ``n`` rows, or ``T n`` for trajectories) and pick the
        enforced ones."""
        if isinstance(self.scale, RowTransform):
            x = self.scale(x, p)
        elif self.scale is not None:
            s = self.scale.to(x.device, x.dtype).repeat(x.shape[1] // self.n)
            x = x * s.reshape(-1, *([1] * (x.dim() - 2)))
        return x if self.rows is None else x.index_select(1, self.rows.to(x.device))

    def _check_batch(self, R: torch.Tensor, u: torch.Tensor) -> None:
        if R.shape[0] != u.shape[0]:
            raise ShapeError(f"the parameters have batch {R.shape[0]} but the basis has batch {u.shape[0]}; "
                             "give parameters of batch 1 or of the basis batch")

    def residual(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        R = self.problem.residual(self._embed(u, 1), p, t=self.t).reshape(-1, self.n)
        self._check_batch(R, u)
        return self._select(R, p)

    def prepare_curvature(self) -> None:
        """Compute the column colouring :meth:`curvature` needs (once; cached on the pattern)."""
        distance2_colouring(self.problem.pattern)

    def hessian_matrix(self, u: torch.Tensor, p: Mapping[str, Any], rbar: torch.Tensor) -> BatchedCSR | None:
        """``d2/du2 (rbar . r(u))`` on the Jacobian's pattern, one matrix per sample (and level),
        or ``None`` when the residual is linear in ``u``.

        The ``n x n`` Hessian of ``rbar . r`` has the Jacobian's sparsity pattern (weak forms
        couple DOFs of one element only), so it is recovered from one Hessian-vector product per
        colour of a distance-2 colouring of the pattern (about 10-30 for Lagrange elements),
        independently of ``N``; not differentiable.
        """
        pattern = self.problem.pattern
        colours = torch.as_tensor(distance2_colouring(pattern), device=u.device)
        n_colours = int(colours.max()) + 1
        rows = torch.as_tensor(pattern.rows, device=u.device)
        cols = torch.as_tensor(pattern.indices, device=u.device)
        p = _detached(p)
        with torch.enable_grad():
            x = self._embed(u.detach(), u.dim() - 1).requires_grad_(True)
            phi = (self._full_residual(x, p) * rbar.detach()).sum()
            (gx,) = torch.autograd.grad(phi, x, create_graph=True)
            if not gx.requires_grad:  # residual linear in u: no second-order term
                return None
            V = torch.nn.functional.one_hot(colours, n_colours).T.to(x.dtype)  # (colours, n)
            V = V.reshape((n_colours,) + (1,) * (x.dim() - 1) + (self.n,)).expand(n_colours, *x.shape)
            (HV,) = torch.autograd.grad(gx, x, V, is_grads_batched=True, allow_unused=True)
        if HV is None:
            return None
        HV = HV.reshape(n_colours, -1, self.n)  # (colours, batch * levels, n)
        vals = HV[colours[cols], :, rows].T  # (batch * levels, nnz)
        return BatchedCSR(pattern, vals.contiguous())

    def curvature(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any], rbar: torch.Tensor) -> torch.Tensor:
        """``B^T [d2/du2 (rbar . r(u))] B``, shape ``(batch, N, N)``: the second-order term of the
        Hessian of ``1/2 ||r(B w)||^2`` at ``u = B w`` when ``rbar = r(u)`` (see
        :meth:`hessian_matrix`)."""
        HB = self.hessian_times_basis(u, B, p, rbar)
        N = B.shape[-1]
        if HB is None:
            return B.new_zeros(B.shape[0], N, N)
        return B.detach().reshape(B.shape[0], -1, N).transpose(1, 2) @ HB.reshape(B.shape[0], -1, N)

    def hessian_times_basis(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any],
                            rbar: torch.Tensor) -> torch.Tensor | None:
        """``[d2/du2 (rbar . r(u))] B`` on the basis' DOFs, shaped like ``B`` (``None`` when the
        residual is linear in ``u``; see :meth:`hessian_matrix`)."""
        H = self.hessian_matrix(u, p, rbar)
        if H is None:
            return None
        axis = B.dim() - 2
        Bf = self._embed(B.detach(), axis)
        HB = jac_times(H, Bf.reshape(-1, self.n, B.shape[-1])).reshape(Bf.shape)
        return HB if self.dofs is None else HB.index_select(axis, self.dofs.to(HB.device))

    def _full_residual(self, x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        """The enforced rows for a field on all ``n`` DOFs."""
        return self._select(self.problem.residual(x, p, t=self.t).reshape(-1, self.n), p)

    def forget(self) -> None:
        self.__dict__.pop("_last_linearization", None)
        self.__dict__.pop("_last_stacked", None)

    def _reuse(self, x: torch.Tensor, p: Mapping[str, Any], compute):
        """``compute()``, the linearisation at the full field ``x``, or the last one made without
        gradients when ``x`` and every parameter tensor equal its own (compared by value): the
        implicit backward at ``w*`` and the rows' magnitudes then find the LM's last evaluation
        instead of assembling it again. Kept within one solve only (:meth:`forget`)."""
        tensors = {k: v for k, v in p.items() if isinstance(v, torch.Tensor)}
        grad = torch.is_grad_enabled() and (x.requires_grad or any(v.requires_grad for v in tensors.values()))
        last = self.__dict__.get("_last_linearization")
        if not grad and last is not None:
            x_last, p_last, out = last
            if (x_last.shape == x.shape and x_last.dtype == x.dtype and x_last.device == x.device
                    and torch.equal(x_last, x) and p_last.keys() == tensors.keys()
                    and all(p_last[k].shape == v.shape and torch.equal(p_last[k], v) for k, v in tensors.items())):
                return out
        out = compute()
        if not grad:
            self._last_linearization = (x.detach().clone(), {k: v.detach().clone() for k, v in tensors.items()}, out)
        return out

    def row_magnitude(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor | None:
        if isinstance(self.scale, RowTransform):
            return None  # the transform mixes rows: no bound from the rows' own terms
        with torch.no_grad():
            x = self._embed(u.detach(), 1)
            _, J = self._reuse(x, p, lambda: self.problem.residual_and_jacobian(x, p, t=self.t))
            mag = BatchedCSR(J.pattern, J.values.abs()).matvec(x.abs()).reshape(-1, self.n)
            return self._select(mag, p)

    def linearize(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._embed(u, 1)
        R, J = self._reuse(x, p, lambda: self.problem.residual_and_jacobian(x, p, t=self.t))
        R = R.reshape(-1, self.n)
        self._check_batch(R, u)
        return self._select(R, p), self._select(jac_times(J, self._embed(B, 1)), p)


class TrajectoryResidual(SteadyResidual):
    """Theta-scheme residual of levels ``1..T`` given level 0, plus initial-condition rows.

    For a field ``U`` with levels ``0..T`` (shape ``(batch, T + 1, n_L)``) the rows are

    ``r = [ R^{1..T}(U)[rows],  c * (U_0 - u0)[ic_rows] ]``

    where ``R^t`` is :meth:`Problem.trajectory_residual` with ``U_0`` as the initial level
    (flattened ``(T, n) -> T n``, so ``rows`` indexes ``t n + i`` for step ``t + 1``) and ``c``
    the initial-condition weight. The initial condition ``u0`` is passed in the parameter mapping
    under the state key :data:`~femoe.layers._state.INITIAL`.

    Parameters
    ----------
    problem : Problem
        A time-dependent problem.
    dt, t0 : float
        Time step and time of level 0.
    rows : index, optional
        Rows of the flattened ``(T n)`` trajectory residual to enforce (default all).
    ic_rows : index, optional
        DOFs of level 0 tied to ``u0`` (default all ``n``; an empty index drops the IC rows, for
        bases that satisfy the initial condition by construction).
    dofs : index, optional
        DOFs the field lives on (default all).
    ic_weight : ``"paper"``, float or tensor
        ``"paper"``: the initial condition divided by its value, as in Chalapathi et al.,
        ``c_i = 1 / max(|u0_i|, 1e-3 max_j |u0_j|)`` (``1`` where ``u0 = 0``); a number or a
        tensor broadcast against ``(batch, n)``.
    """

    time_dependent = True

    def __init__(self, problem: Problem, dt: float, t0: float = 0.0, rows: Any = None, ic_rows: Any = None,
                 dofs: Any = None, ic_weight: str | float | torch.Tensor = "paper", row_scale: Any = "mass"):
        if not problem.is_time_dependent:
            raise ProblemError(f"problem {problem.name!r} is steady (no storage term); a trajectory needs one")
        if not dt > 0:
            raise ProblemError(f"dt must be positive; got {dt}")
        if isinstance(row_scale, RowTransform):
            raise ProblemError("a row transform (energy rows) applies to steady problems only; a trajectory's "
                               "rows take row weights ('mass', None or an array) or TimeIntegratedRows")
        self.integrate = isinstance(row_scale, TimeIntegratedRows)
        if self.integrate:
            if row_scale.s.shape != (problem.n,):
                raise ShapeError(f"time-integrated rows have {row_scale.s.size} weights but the problem has "
                                 f"{problem.n} DOFs")
            row_scale = row_scale.s
        super().__init__(problem, None, dofs, row_scale=row_scale)
        self.rows = rows if rows is None else as_index("rows", rows, 2**62)
        self.ic_rows = as_index("ic_rows", ic_rows, self.n)
        self.dt, self.t0 = float(dt), float(t0)
        if isinstance(ic_weight, str) and ic_weight != "paper":
            raise ProblemError(f"ic_weight must be 'paper', a number or a tensor; got {ic_weight!r}")
        self.ic_weight = ic_weight

    def check_levels(self, T: int) -> None:
        if self.rows is not None and self.rows.numel() and int(self.rows.max()) >= T * self.n:
            raise ShapeError(f"rows index the flattened (T={T}) x (n={self.n}) trajectory residual, so they must be "
                             f"below {T * self.n}; got {int(self.rows.max())}")

    def _integrated(self, x: torch.Tensor, T: int, transpose: bool = False) -> torch.Tensor:
        """The enforced PDE rows ``x`` ``(batch, m, ...)`` summed over the levels when the rows are
        time-integrated (:class:`TimeIntegratedRows`), else ``x``."""
        if not self.integrate:
            return x
        if self.rows is not None:
            ok = self.__dict__.setdefault("_integrable", {})
            if T not in ok:
                r = self.rows.cpu().numpy()
                lev = r.reshape(T, -1) if r.size % T == 0 else None
                ok[T] = lev is not None and bool(((lev - np.arange(T)[:, None] * self.n) == lev[:1]).all())
            if not ok[T]:
                raise ProblemError("time-integrated rows sum each DOF's rows over the levels, so the enforced rows "
                                   "must be the same DOFs at every level (level-major); these rows are not")
        return TimeIntegratedRows.integrate(x, T, self.dt, transpose)

    def holds_samples(self) -> bool:
        """Per-sample initial-row weights (``ic_weight`` a tensor with a batch axis)."""
        w = self.ic_weight
        return isinstance(w, torch.Tensor) and w.dim() >= 2 and w.shape[0] > 1

    def _weights(self, u0: torch.Tensor) -> torch.Tensor:
        if isinstance(self.ic_weight, str):
            a = u0.abs()
            floor = 1e-3 * a.amax(dim=-1, keepdim=True)
            c = 1.0 / torch.maximum(a, floor)
            return torch.where(floor > 0, c, torch.ones_like(c))
        return torch.as_tensor(self.ic_weight, dtype=u0.dtype, device=u0.device)

    def _ic_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.ic_rows is None else x.index_select(1, self.ic_rows.to(x.device))

    def _split(self, p: Mapping[str, Any]) -> tuple[dict, torch.Tensor]:
        p = dict(p)
        if INITIAL not in p:
            raise ProblemError("a trajectory residual needs the initial condition (u0)")
        return p, p.pop(INITIAL)

    def _full_residual(self, x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        # levels do not interact inside one residual term, so the Hessian is block diagonal
        # over levels and one colouring of the spatial pattern serves all levels at once
        return self._residual_full_levels(x, p)

    def residual(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        return self._residual_full_levels(self._embed(u, 2), p)

    def _residual_full_levels(self, U: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        p, u0 = self._split(p)
        batch, T = U.shape[0], U.shape[1] - 1
        R = self.problem.trajectory_residual(U[:, 1:], U[:, 0], self.dt, p, t0=self.t0)
        if R.shape[0] != batch:
            raise ShapeError(f"the parameters have batch {R.shape[0]} but the basis has batch {batch}")
        R = self._integrated(self._select(R.reshape(batch, T * self.n)), T)
        ic = self._weights(u0) * (U[:, 0] - u0)
        return torch.cat([R, self._ic_rows(ic.expand(batch, -1))], dim=1)

    def hessian_matrix(self, u: torch.Tensor, p: Mapping[str, Any], rbar: torch.Tensor) -> BatchedCSR | None:
        """:meth:`SteadyResidual.hessian_matrix` for the trajectory's rows, from the problem's
        second derivatives (:meth:`Problem.trajectory_hessian`) instead of Hessian-vector products
        through the assembly: ``rbar``'s PDE rows are mapped back to the trajectory residual's rows
        by the adjoint of the row weights, the row selection and the time integration (linear: one
        vector-Jacobian product), and the initial rows are linear in the field."""
        p0, _ = self._split(_detached(p))
        U = self._embed(u.detach(), u.dim() - 1)
        batch, T = U.shape[0], U.shape[1] - 1
        with torch.enable_grad():
            R = U.new_zeros(batch, T * self.n).requires_grad_(True)
            rows = self._integrated(self._select(R), T)
            (weights,) = torch.autograd.grad((rows * rbar[:, :rows.shape[1]].detach()).sum(), R)
        return self.problem.trajectory_hessian(U, weights.reshape(batch, T, self.n), self.dt, p0, t0=self.t0)

    # d R^t = [S'(u^t)/dt + theta A'(u^t)] dU^t + [-S'(u^{t-1})/dt + (1 - theta) A'(u^{t-1})] dU^{t-1}.
    # With P_l = d step_residual / d u_new at level l (= S'/dt + theta A', identity on Dirichlet
    # rows) and Q_l = A'(u^l, t_l) (the steady Jacobian, identity on Dirichlet rows), the
    # coefficient of dU^{t-1} is Q_{t-1} - P_{t-1}: zero on Dirichlet rows, as it must be.
    # Problem.trajectory_residual_and_jacobians evaluates R, P and Q of all levels in one batched
    # call. Without gradients, J_w is one sparse product: the rows' Jacobian with respect to the
    # whole trajectory (block bidiagonal in the levels, row-scaled, enforced rows only, initial
    # rows appended) as one CSR matrix per sample, applied to B (see _stacked_jacobian).
    def _linearization(self, U: torch.Tensor, p: Mapping[str, Any]):
        """``(R, P, Q)`` of the levels ``U`` (all DOFs; parameters without the initial condition),
        reusing the last evaluation made without gradients when ``U`` and every parameter tensor
        are equal to its own (compared by value): the implicit backward at ``w*`` then finds the
        LM's last accepted evaluation instead of assembling it again."""
        return self._reuse(U, p, lambda: self.problem.trajectory_residual_and_jacobians(U, self.dt, p, t0=self.t0))

    def rows_and_linearization(self, u: torch.Tensor, p: Mapping[str, Any]):
        """``(r, P, Q, c)``: the rows at ``u`` and the linearisation they come from (the levels'
        Jacobians, reused as :meth:`_linearization` says, and the initial rows' weights): what
        :meth:`linearize` makes ``J_w`` from, for a caller laying the stacked Jacobian's rows out
        itself (the folded experts)."""
        p, u0 = self._split(p)
        U = self._embed(u, 2)
        batch, T = U.shape[0], U.shape[1] - 1
        R, P, Q = self._linearization(U, p)
        if P.batch_size != batch * (T + 1):
            raise ShapeError(f"the parameters have batch {P.batch_size // (T + 1)} but the basis has batch {batch}")
        c = self._weights(u0)
        ic = self._ic_rows((c * (U[:, 0] - u0)).expand(batch, -1))
        r = torch.cat([self._integrated(self._select(R.reshape(batch, T * self.n)), T), ic], dim=1)
        return r, P, Q, c

    def stacked_product_applies(self, P: BatchedCSR, B: torch.Tensor, c) -> bool:
        """Whether ``J_w`` is the sparse product :meth:`_stacked_jacobian` (nothing needs a graph)."""
        return not (torch.is_grad_enabled() and (P.values.requires_grad or B.requires_grad or
                                                 (isinstance(c, torch.Tensor) and c.requires_grad)))

    def linearize(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        r, P, Q, c = self.rows_and_linearization(u, p)
        return r, self.jacobian(P, Q, c, B)

    def jacobian(self, P: BatchedCSR, Q: BatchedCSR, c, B: torch.Tensor) -> torch.Tensor:
        """``J_w`` ``(batch, m, N)`` of the rows from their linearisation (:meth:`rows_and_linearization`)
        and the basis ``B`` ``(batch, T + 1, n_L, N)``: one sparse product without gradients, else
        differentiable products with the levels' Jacobians (the unrolled backward's path)."""
        batch, T = B.shape[0], B.shape[1] - 1
        if self.stacked_product_applies(P, B, c):
            J = self._stacked_jacobian(P.values, Q.values, c, B, T)
            if self.integrate:
                m = J.shape[1] - (self.n if self.ic_rows is None else self.ic_rows.numel())  # the PDE rows
                J = torch.cat([self._integrated(J[:, :m], T), J[:, m:]], dim=1)
            return J
        Bf = self._embed(B, 2)
        N = Bf.shape[-1]
        Bflat = Bf.reshape(batch * (T + 1), self.n, N)
        PB = jac_times(P, Bflat).reshape(batch, T + 1, self.n, N)
        QB = jac_times(Q, Bflat).reshape(batch, T + 1, self.n, N)
        rows_J = PB[:, 1:] + QB[:, :-1] - PB[:, :-1]
        icJ = self._ic_rows((c.unsqueeze(-1) if c.dim() else c) * Bf[:, 0])
        return torch.cat([self._integrated(self._select(rows_J.reshape(batch, T * self.n, -1)), T),
                          icJ.expand(batch, -1, -1)], dim=1)

    def _stacked_structure(self, T: int) -> dict[str, np.ndarray]:
        """Index arrays of the rows' Jacobian with respect to the trajectory, for one sample
        (cached per ``T``): the enforced PDE rows of steps ``1..T`` (row ``l n + i`` has the
        entries of row ``i`` of ``Q_l - P_l`` at level ``l`` and of ``P_{l+1}`` at level ``l + 1``),
        then the initial rows (one entry each, at level 0). Columns are ``level n_L + local DOF``;
        entries at DOFs outside ``dofs`` (where the basis is zero) are dropped.

        ``take`` indexes the values ``[(Q - P)_{0..T-1}, P_{1..T}]`` (each ``(T, nnz)``, flattened)
        for the PDE entries, ``entry_row`` gives each PDE entry's DOF (for the row scale),
        ``ic_dofs`` the initial rows' DOFs."""
        cache = self.__dict__.setdefault("_stacked_cache", {})
        if T in cache:
            return cache[T]
        pat = self.problem.pattern
        n, nnz = self.n, pat.nnz
        sel = np.arange(T * n) if self.rows is None else self.rows.cpu().numpy()
        lev, dof = sel // n, sel % n
        start, count = pat.indptr[dof], np.diff(pat.indptr)[dof]
        # the k-th entry of a selected row: start + k; D entries then E entries per row
        rep_row = np.repeat(np.arange(sel.size), count)
        k = np.arange(rep_row.size) - np.repeat(np.cumsum(count) - count, count) + start[rep_row]
        lv = lev[rep_row]
        j = pat.indices[k]
        if self.dofs is None:
            loc, n_l = np.arange(n), n
        else:
            d = self.dofs.cpu().numpy()
            loc, n_l = np.full(n, -1, dtype=np.int64), d.size
            loc[d] = np.arange(d.size)
        keep = loc[j] >= 0
        take = np.stack([lv * nnz + k, T * nnz + lv * nnz + k])[:, keep]  # (2, e): D part, E part
        cols = np.stack([lv * n_l + loc[j], (lv + 1) * n_l + loc[j]])[:, keep]
        row_of = rep_row[keep]
        # order the PDE entries row by row (D then E within a row: any order is a valid CSR)
        order = np.argsort(np.concatenate([row_of, row_of]), kind="stable")
        take = take.reshape(-1)[order]
        cols = cols.reshape(-1)[order]
        per_row = np.bincount(row_of, minlength=sel.size) * 2
        ic = np.arange(n) if self.ic_rows is None else self.ic_rows.cpu().numpy()
        ic_cols = loc[ic]
        ic_keep = ic_cols >= 0
        indptr = np.concatenate([[0], np.cumsum(np.concatenate([per_row, ic_keep.astype(np.int64)]))])
        out = {"take": take, "entry_row": dof[np.concatenate([row_of, row_of])[order]],
               "entry_pos": np.repeat(np.arange(sel.size + ic.size), np.diff(indptr)),
               "cols": np.concatenate([cols, ic_cols[ic_keep]]), "ic_dofs": ic[ic_keep], "indptr": indptr,
               "n_rows": np.array(sel.size + ic.size), "n_cols": np.array((T + 1) * n_l)}
        cache[T] = out
        return out

    def _stacked_values(self, Pv: torch.Tensor, Qv: torch.Tensor, c, batch: int, T: int) -> torch.Tensor:
        """The entries ``(batch, e)`` of the stacked Jacobian (see :meth:`_stacked_structure`); the
        last ones are kept for the same ``P``, ``Q`` (the very tensors) and weights ``c``: the LM's
        ``J_w`` and the rows' magnitudes at one linearisation gather them once."""
        last = self.__dict__.get("_last_stacked")
        if (last is not None and last[0] is Pv and last[1] is Qv and last[3] == (batch, T)
                and (last[2] is c or (isinstance(c, torch.Tensor) and isinstance(last[2], torch.Tensor)
                                      and last[2].shape == c.shape and torch.equal(last[2], c.detach())))):
            return last[4]
        vals = self._gather_stacked_values(Pv, Qv, c, batch, T)
        if not torch.is_grad_enabled() or not (Pv.requires_grad or Qv.requires_grad):
            self._last_stacked = (Pv, Qv, c.detach() if isinstance(c, torch.Tensor) else c, (batch, T), vals)
        return vals

    def _gather_stacked_values(self, Pv: torch.Tensor, Qv: torch.Tensor, c, batch: int, T: int) -> torch.Tensor:
        st = self._stacked_structure(T)
        nnz = self.problem.pattern.nnz
        Pv, Qv = Pv.detach().reshape(batch, T + 1, nnz), Qv.detach().reshape(batch, T + 1, nnz)
        dev = Pv.device
        key = ("idx", str(dev))
        if key not in st:
            st[key] = {k: torch.as_tensor(st[k], device=dev) for k in ("take", "entry_row", "ic_dofs", "entry_pos",
                                                                        "cols")}
        idx = st[key]
        V = torch.cat([(Qv[:, :-1] - Pv[:, :-1]).reshape(batch, -1), Pv[:, 1:].reshape(batch, -1)], dim=1)
        vals = V[:, idx["take"]]
        if self.scale is not None:
            vals = vals * self.scale.to(dev, vals.dtype)[idx["entry_row"]]
        c = c.detach() if isinstance(c, torch.Tensor) else c
        if isinstance(c, torch.Tensor) and c.dim():
            civ = c.expand(batch, -1)[:, idx["ic_dofs"]]
        else:
            civ = torch.full((batch, int(idx["ic_dofs"].numel())), float(c), dtype=vals.dtype, device=dev)
        return torch.cat([vals, civ.to(vals.dtype)], dim=1).contiguous()

    def _stacked_jacobian(self, Pv: torch.Tensor, Qv: torch.Tensor, c, B: torch.Tensor, T: int) -> torch.Tensor:
        """``J_w`` ``(batch, m, N)`` of :meth:`linearize` as one sparse product (no gradient):
        equal to ``[P_l B_l + (Q_{l-1} - P_{l-1}) B_{l-1}]`` (scaled, enforced rows) stacked over
        the steps, then ``c B_0`` on the initial rows."""
        st = self._stacked_structure(T)
        vals = self._stacked_values(Pv, Qv, c, B.shape[0], T)
        return block_csr_product(vals, st["indptr"], st["cols"], int(st["n_cols"]), B, st)

    def _stacked_operator(self, Pv: torch.Tensor, Qv: torch.Tensor, c, batch: int, T: int, absolute: bool = False):
        """``(M, M^T, m, nc)``: products of the stacked Jacobian (:meth:`_stacked_structure`) with
        vectors, ``(batch, nc) -> (batch, m)`` and back, by gather and scatter (any device); with
        ``absolute`` of the matrix of its entries' magnitudes."""
        vals = self._stacked_values(Pv, Qv, c, batch, T)
        if absolute:
            vals = vals.abs()
        st = self._stacked_structure(T)
        idx = st[("idx", str(vals.device))]
        rows, cols, m, nc = idx["entry_pos"], idx["cols"], int(st["n_rows"]), int(st["n_cols"])
        m_pde = m - int(idx["ic_dofs"].numel())

        def M(x):
            y = x.new_zeros(batch, m).index_add_(1, rows, vals * x[:, cols])
            return torch.cat([self._integrated(y[:, :m_pde], T), y[:, m_pde:]], dim=1) if self.integrate else y

        def MT(y):
            if self.integrate:
                y = torch.cat([self._integrated(y[:, :m_pde], T, transpose=True), y[:, m_pde:]], dim=1)
            return y.new_zeros(batch, nc).index_add_(1, cols, vals * y[:, rows])

        return M, MT, m, nc

    def row_magnitude(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor | None:
        """The rows' terms' magnitudes (:meth:`ResidualModel.row_magnitude`) from the stacked
        Jacobian at ``u`` (the LM's linearisation there, reused), applied to ``|u|``; for
        time-integrated rows the cumulative sums of the levels' magnitudes (a bound: the terms of
        one DOF at successive levels are counted apart)."""
        p0, u0 = self._split(p)
        with torch.no_grad():
            U = self._embed(u.detach(), 2)
            batch, T = U.shape[0], U.shape[1] - 1
            _, P, Q = self._linearization(U, p0)
            c = self._weights(u0)
            M, _, _, nc = self._stacked_operator(P.values, Q.values, c, batch, T, absolute=True)
            return M(u.detach().abs().reshape(batch, nc))

    def basis_adjoint(self, w: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any], r_star: torch.Tensor):
        """The implicit backward's pieces with respect to ``B`` alone, without differentiating the
        assembly: ``(S, vjp)``.

        At the optimum ``G(w*, B) = J_w^T r + rho w* = 0`` with ``J_w = M B``, ``M = dr/dU`` the
        rows' Jacobian with respect to the trajectory (:meth:`_stacked_structure`). For an adjoint
        ``v``, ``(dG/dB)^T v = (M^T r) v^T + (M^T M B v + H_r B v) w*^T`` with ``H_r`` the Hessian
        of ``r* . r(U)`` (block diagonal over levels, :meth:`hessian_matrix`): the first term from
        ``B`` inside ``J_w``, the second from ``r``'s dependence on ``U = B w``, the third from
        ``M``'s. ``S = B^T H_r B`` is the Hessian's second-order term (:meth:`curvature`); ``vjp(v)``
        returns ``-(dG/dB)^T v``, the gradient of the loss with respect to ``B`` through ``w*``.
        Costs one linearisation and one coloured Hessian, where autograd's double backward
        through the assembly costs several; exact-Hessian backward only."""
        p0, u0 = self._split(p)
        batch, L, nl, N = B.shape
        with torch.no_grad():
            u = basis_field(B, w)
            _, P, Q = self._linearization(self._embed(u, 2), p0)
            M, MT, _, nc = self._stacked_operator(P.values, Q.values, self._weights(u0), batch, L - 1)
            Bf = B.detach().reshape(batch, nc, N)
            HB = self.hessian_times_basis(u, B, p, r_star)
            HB = None if HB is None else HB.reshape(batch, nc, N)
        return basis_adjoint_parts(Bf, w, MT(r_star.detach()), M, MT, HB, B.shape)
