"""Shared pieces of the linear solvers: the info record, the solver base class, validation.

Every solver works internally on right-hand sides of shape ``(B, n, k)``; :meth:`LinearSolver.solve`
validates the user's ``(B, n)`` or ``(B, n, k)`` tensor, broadcasts the batch against the matrix
batch, and restores the caller's shape on the way out.
"""

from __future__ import annotations

import abc

import logging
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import scipy.sparse as sp
import torch

from femoe.errors import ConfigError, ConvergenceError, ConvergenceWarning, ShapeError, SingularMatrixError
from femoe.sparse import BatchedCSR, CSRPattern

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class SolveInfo:
    """What one call of :meth:`LinearSolver.solve` did, per batch element.

    Attributes
    ----------
    solver : str
        Registry name of the solver that ran (``"auto"`` is resolved to the concrete one).
    iterations : torch.Tensor
        ``(B,)`` int64; Krylov iterations (the maximum over right-hand-side columns), 0 for
        direct solvers.
    residual_norms : torch.Tensor
        ``(B,)`` relative residuals ``||b - A x|| / ||b||`` of the returned ``x``, the maximum
        over right-hand-side columns (``||b - A x||`` where ``b`` is zero). Computed from the true
        residual, not from a Krylov recurrence. Same dtype and device as ``x``.
    converged : torch.Tensor
        ``(B,)`` bool; True where every column met the solver's tolerance (always True for
        direct solvers, which raise instead of returning a failed solve).
    transpose : bool
        Whether ``A^T x = b`` was solved.
    """

    solver: str
    iterations: torch.Tensor
    residual_norms: torch.Tensor
    converged: torch.Tensor
    transpose: bool = False

    @property
    def all_converged(self) -> bool:
        """True when every batch element converged."""
        return bool(self.converged.all())


def pattern_cache(pattern: CSRPattern) -> dict:
    """A per-pattern dict where solvers keep index arrays derived from the pattern.

    The pattern is immutable, so anything computed from it alone can be reused by every
    solver built on it (``CSRPattern.torch_indices`` caches the same way).
    """
    return pattern.__dict__.setdefault("_linalg_cache", {})


def symmetric_mask(A: BatchedCSR) -> torch.Tensor:
    """``(B,)`` bool: which batch elements of ``A`` are numerically symmetric.

    Compares ``values`` against the values of the transpose on the same pattern, relative to
    the largest entry, with a tolerance of a thousand machine epsilons.
    """
    pattern = A.pattern
    if not pattern.is_structurally_symmetric:
        return torch.zeros(A.batch_size, dtype=torch.bool, device=A.device)
    cache = pattern_cache(pattern)
    key = ("transpose_perm", str(A.device))
    if key not in cache:
        cache[key] = torch.as_tensor(pattern.transpose_permutation, device=A.device)
    v = A.values.detach()
    if v.shape[1] == 0:
        return torch.ones(A.batch_size, dtype=torch.bool, device=A.device)
    if v.device.type == "cpu":
        # numpy is single-threaded: see SCIPY_SPMV_MAX_NNZ for why that matters on the CPU
        vn = v.numpy()
        eps = np.finfo(vn.dtype).eps
        scale = np.maximum(np.abs(vn).max(axis=1), np.finfo(vn.dtype).tiny)
        diff = np.abs(vn - vn[:, pattern.transpose_permutation]).max(axis=1)
        return torch.from_numpy(diff <= 1000 * eps * scale)
    scale = v.abs().amax(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    tol = 1000 * torch.finfo(v.dtype).eps * scale
    return (v - v[:, cache[key]]).abs().amax(dim=1) <= tol


def check_matrix(A: Any, argument: str = "A") -> BatchedCSR:
    """Validate that ``A`` is a square float32/float64 :class:`BatchedCSR`."""
    if not isinstance(A, BatchedCSR):
        raise ShapeError(f"{argument} must be a femoe.sparse.BatchedCSR; got {type(A).__name__}")
    n_rows, n_cols = A.pattern.shape
    if n_rows != n_cols:
        raise ShapeError(f"{argument} must be square; got shape {(n_rows, n_cols)}")
    if A.dtype not in _FLOAT_DTYPES:
        raise ShapeError(f"{argument}.values must be float32 or float64; got {A.dtype}")
    return A


class LinearSolver(abc.ABC):
    """Base class: set up (factorise, build a preconditioner) once, then solve many times.

    Subclasses set :attr:`name`, list their keyword options in :attr:`options`, do the setup in
    ``__init__`` and implement :meth:`_solve` on ``(B, n, k)`` right-hand sides.

    Parameters
    ----------
    A : BatchedCSR
        Square matrices, batch ``B`` or 1. Only ``A.values.detach()`` is used: solvers are not
        differentiable themselves; :func:`femoe.linalg.sparse_solve` is.
    strict : bool
        Raise :class:`femoe.errors.ConvergenceError` when an iterative solve does not converge
        (otherwise a :class:`femoe.errors.ConvergenceWarning` is emitted and ``info.converged``
        says which batch elements failed).
    """

    name: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    requires_symmetric: ClassVar[bool] = False

    def __init__(self, A: BatchedCSR, *, strict: bool = False):
        self.A = check_matrix(A)
        self.values = A.values.detach()
        self.n = A.pattern.shape[0]
        self.strict = bool(strict)
        #: ``(B,)`` bool, which batch elements are numerically symmetric (computed once)
        self.symmetric = symmetric_mask(self.A)
        if self.requires_symmetric:
            sym = self.symmetric
            if not bool(sym.all()):
                bad = int((~sym).nonzero()[0, 0])
                raise ConfigError(
                    f"solver {self.name!r} needs a symmetric matrix, but batch element {bad} of A is not "
                    "symmetric; use 'dense_lu', 'superlu', 'gmres' or 'auto'"
                )

    @property
    def batch_size(self) -> int:
        return int(self.values.shape[0])

    def solve(self, b: torch.Tensor, transpose: bool = False) -> tuple[torch.Tensor, SolveInfo]:
        """Solve ``A x = b`` (or ``A^T x = b`` with ``transpose=True``).

        Parameters
        ----------
        b : torch.Tensor
            ``(B, n)`` or ``(B, n, k)``, same dtype and device as ``A``. A batch of 1 on either
            side is broadcast against the other.
        transpose : bool
            Solve with the transposed matrix, reusing the same factorisation or preconditioner.

        Returns
        -------
        x : torch.Tensor
            Same shape as ``b`` (with the broadcast batch), dtype and device of ``A``.
        info : SolveInfo
        """
        b3, squeeze = self._check_rhs(b)
        with torch.no_grad():
            x, iterations, converged = self._solve(b3.detach(), bool(transpose))
            finite = _finite_per_batch(x)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0, 0])
                raise SingularMatrixError(
                    f"solver {self.name!r} produced non-finite values for batch element {bad}: the matrix "
                    "is singular or too ill-conditioned for this dtype"
                )
            residual = self.residual_norms(x, b3, bool(transpose))
        info = SolveInfo(self.name, iterations, residual, converged, bool(transpose))
        if not info.all_converged:
            failed = (~converged).nonzero().flatten().tolist()
            message = (
                f"solver {self.name!r} did not converge for batch elements {failed} "
                f"(relative residuals {residual[~converged].tolist()}); raise maxiter, loosen rtol, "
                "or use a stronger preconditioner"
            )
            if self.strict:
                raise ConvergenceError(message, info=info)
            warnings.warn(message, ConvergenceWarning, stacklevel=2)
        return (x.squeeze(-1) if squeeze else x), info

    @abc.abstractmethod
    def _solve(self, b: torch.Tensor, transpose: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Solve for ``(B, n, k)`` right-hand sides; return ``x``, iterations and converged flags (B,)."""

    # -- helpers shared by the solvers -------------------------------------------------------
    def _check_rhs(self, b: Any) -> tuple[torch.Tensor, bool]:
        if not isinstance(b, torch.Tensor):
            raise ShapeError(f"b must be a torch.Tensor; got {type(b).__name__}")
        if b.dim() not in (2, 3) or b.shape[1] != self.n:
            raise ShapeError(f"b must have shape (batch, n={self.n}) or (batch, n={self.n}, k); got {tuple(b.shape)}")
        if b.dtype != self.values.dtype:
            raise ShapeError(f"b must have the dtype of A ({self.values.dtype}); got {b.dtype}")
        if b.device != self.values.device:
            raise ShapeError(f"b must be on the device of A ({self.values.device}); got {b.device}")
        batch = self.batch_size
        if b.shape[0] != batch and batch != 1 and b.shape[0] != 1:
            raise ShapeError(
                f"b must have batch size {batch} (the batch of A) or 1; got {b.shape[0]}"
            )
        squeeze = b.dim() == 2
        b3 = b.unsqueeze(-1) if squeeze else b
        if b3.shape[0] < batch:
            b3 = b3.expand(batch, -1, -1)
        return b3, squeeze

    def _zero_iterations(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.zeros(batch, dtype=torch.int64, device=device),
            torch.ones(batch, dtype=torch.bool, device=device),
        )

    def residual_norms(self, x: torch.Tensor, b: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``(B,)`` relative residuals of ``(B, n, k)`` ``x`` (max over columns)."""
        if x.device.type == "cpu":
            bn = b.numpy()
            r = bn - self.matmul(x, transpose).numpy()
            rn = np.linalg.norm(r, axis=1)
            bnorm = np.broadcast_to(np.linalg.norm(bn, axis=1), rn.shape)
            rel = np.where(bnorm > 0, rn / np.where(bnorm > 0, bnorm, 1), rn)
            return torch.from_numpy(rel.max(axis=1) if rel.shape[1] else np.zeros(rel.shape[0], rel.dtype))
        r = b - self.matmul(x, transpose)
        rn = torch.linalg.vector_norm(r, dim=1)
        bn = torch.linalg.vector_norm(b, dim=1).expand_as(rn)
        rel = torch.where(bn > 0, rn / torch.where(bn > 0, bn, torch.ones_like(bn)), rn)
        return rel.amax(dim=1) if rel.shape[1] else rel.new_zeros(rel.shape[0])

    def matmul(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``A_b @ x_b`` (or ``A_b^T @ x_b``) for ``(B, n, k)`` x (one SpMV, for residuals)."""
        transpose = transpose and not bool(self.symmetric.all())
        return csr_operator(self.A.pattern, self.values, transpose, scipy_max_nnz=None)(x)


def _finite_per_batch(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu":
        return torch.from_numpy(np.isfinite(x.numpy()).reshape(x.shape[0], -1).all(axis=1))
    return torch.isfinite(x).flatten(1).all(dim=1)


def csr_operator(pattern: CSRPattern, values: torch.Tensor, transpose: bool = False,
                 scipy_max_nnz: Optional[int] = -1):
    """A function ``x -> A @ x`` (or ``A^T @ x``) on ``(B, n, k)`` tensors using one CSR matrix.

    Callers pass ``transpose=False`` for symmetric matrices, saving the transposed copy.

    A batch of matrices becomes one block-diagonal CSR matrix (so a single SpMM kernel runs);
    a single matrix is applied to all batch elements and columns at once. torch CSR SpMV is
    20-30x faster than a COO gather/scatter (MEASURED.md). On the CPU, operators with at most
    ``scipy_max_nnz`` stored entries (default :data:`SCIPY_SPMV_MAX_NNZ`; ``None``: any size)
    use SciPy's single-threaded SpMV instead.
    """
    if scipy_max_nnz == -1:
        scipy_max_nnz = SCIPY_SPMV_MAX_NNZ
    if transpose:
        cache = pattern_cache(pattern)
        key = ("transpose_perm", str(values.device))
        if key not in cache:
            cache[key] = torch.as_tensor(pattern.transpose_permutation, device=values.device)
        values = values[:, cache[key]]
        pattern = pattern.transpose_pattern
    n = pattern.shape[0]
    batch = values.shape[0]
    crow, col = _block_indices(pattern, batch, values.device)
    if values.device.type == "cpu" and (scipy_max_nnz is None or batch * pattern.nnz <= scipy_max_nnz):
        return _scipy_operator(crow, col, values, batch, n)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        M = torch.sparse_csr_tensor(
            crow, col, values.reshape(-1), (batch * n, batch * n), check_invariants=False
        )

    def apply(x: torch.Tensor) -> torch.Tensor:
        B, _, k = x.shape
        if batch == 1:
            y = M @ x.permute(1, 0, 2).reshape(n, B * k)
            return y.reshape(n, B, k).permute(1, 0, 2)
        if B != batch:
            x = x.expand(batch, -1, -1)
        return (M @ x.reshape(batch * n, k)).reshape(batch, n, k)

    return apply


#: On the CPU, matrices with at most this many stored entries (all batch elements together) are
#: applied with SciPy's single-threaded SpMV: torch's CSR kernel parallelises even tiny
#: products, and when another process holds a core its threads wait on each other (measured
#: on the 2-core machine: 0.6 ms for an 18 x 18 product, 6 ms at n = 1000, 5-10x slower
#: elementwise ops at 1e5). Larger Krylov operators keep torch's kernel, 2x faster than SciPy's
#: at 1e6 on an idle machine. One-off products (residual checks) always use SciPy on the CPU.
SCIPY_SPMV_MAX_NNZ = 200_000


def _scipy_operator(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, batch: int, n: int):
    data = values.reshape(-1).numpy()  # a view: values are detached CPU tensors
    M = sp.csr_matrix((data, col.numpy(), crow.numpy()), shape=(batch * n, batch * n))

    def apply(x: torch.Tensor) -> torch.Tensor:
        B, _, k = x.shape
        if batch == 1:
            y = M @ x.permute(1, 0, 2).reshape(n, B * k).numpy()
            return torch.from_numpy(y).reshape(n, B, k).permute(1, 0, 2)
        if B != batch:
            x = x.expand(batch, -1, -1)
        return torch.from_numpy(M @ x.reshape(batch * n, k).numpy()).reshape(batch, n, k)

    return apply


def block_diagonal_indices(indptr: np.ndarray, indices: np.ndarray, n_cols: int, batch: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """CSR row pointers and column indices of the block-diagonal matrix of ``batch`` blocks that
    share one CSR structure (``indptr``, ``indices``, ``n_cols`` columns); block ``b``'s values
    follow block ``b - 1``'s."""
    nnz = int(indptr[-1])
    offsets = np.arange(batch, dtype=np.int64)
    crow = np.concatenate([(indptr[:-1][None, :] + nnz * offsets[:, None]).ravel(), [batch * nnz]])
    col = (indices[None, :] + n_cols * offsets[:, None]).ravel()
    return crow, col


def _block_indices(pattern: CSRPattern, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cache = pattern_cache(pattern)
    key = ("block_csr", batch, str(device))
    if key not in cache:
        crow, col = block_diagonal_indices(pattern.indptr, pattern.indices, pattern.shape[1], batch)
        cache[key] = (torch.as_tensor(crow, device=device), torch.as_tensor(col, device=device))
    return cache[key]


def default_rtol(dtype: torch.dtype) -> float:
    """Default relative tolerance of the Krylov solvers: 1e-10 in float64, 1e-5 in float32."""
    return 1e-10 if dtype == torch.float64 else 1e-5
