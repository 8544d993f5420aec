"""Sparse matrices with a fixed pattern and a leading batch of values.

Weak-form Jacobians share one sparsity pattern across samples, Newton steps and time levels,
so femoe stores the pattern once (:class:`CSRPattern`) and the numbers separately as a
``(batch, nnz)`` tensor (:class:`BatchedCSR`). Conversions to ``torch.sparse_csr_tensor`` and
to SciPy are provided for solvers; the values tensor is what autograd sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from femoe.errors import ShapeError


@dataclass(frozen=True, eq=False)
class CSRPattern:
    """Row pointers and column indices of an ``(n_rows, n_cols)`` CSR matrix (numpy int64).

    Column indices are sorted within each row and unique.
    """

    indptr: np.ndarray
    indices: np.ndarray
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @cached_property
    def rows(self) -> np.ndarray:
        """Row index of every stored entry (COO rows), int64."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr))

    @cached_property
    def transpose_permutation(self) -> np.ndarray:
        """``perm`` such that ``values[perm]`` are the CSR values of the transpose
        (whose pattern is :attr:`transpose_pattern`)."""
        order = np.lexsort((self.rows, self.indices))
        return order

    @cached_property
    def transpose_pattern(self) -> "CSRPattern":
        order = self.transpose_permutation
        cols = self.indices[order]
        indptr = np.zeros(self.shape[1] + 1, dtype=np.int64)
        np.add.at(indptr, cols + 1, 1)
        return CSRPattern(np.cumsum(indptr), self.rows[order].copy(), (self.shape[1], self.shape[0]))

    @cached_property
    def is_structurally_symmetric(self) -> bool:
        if self.shape[0] != self.shape[1]:
            return False
        t = self.transpose_pattern
        return bool(np.array_equal(t.indptr, self.indptr) and np.array_equal(t.indices, self.indices))

    @cached_property
    def diagonal_positions(self) -> np.ndarray:
        """Position in ``values`` of each diagonal entry, or -1 where it is not stored."""
        n = min(self.shape)
        pos = np.full(n, -1, dtype=np.int64)
        mask = self.rows[: self.nnz] == self.indices
        r = self.rows[mask]
        pos[r[r < n]] = np.nonzero(mask)[0][r < n]
        return pos

    def principal_submatrix(self, index: np.ndarray) -> tuple["CSRPattern", np.ndarray]:
        """The pattern of ``A[index][:, index]`` for sorted unique ``index``, and where each of
        its entries sits in ``values`` (so ``values[:, positions]`` are the submatrix's values)."""
        index = np.asarray(index, dtype=np.int64)
        renumber = np.full(self.shape[0], -1, dtype=np.int64)
        renumber[index] = np.arange(index.size)
        keep = (renumber[self.rows] >= 0) & (renumber[self.indices] >= 0)
        positions = np.nonzero(keep)[0]
        counts = np.bincount(renumber[self.rows[positions]], minlength=index.size)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return CSRPattern(indptr, renumber[self.indices[positions]], (index.size, index.size)), positions

    def to_scipy(self, values: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.asarray(values), self.indices, self.indptr), shape=self.shape)

    @classmethod
    def from_scipy(cls, A: sp.spmatrix) -> "CSRPattern":
        A = sp.csr_matrix(A)
        A.sum_duplicates()
        A.sort_indices()
        return cls(A.indptr.astype(np.int64), A.indices.astype(np.int64), tuple(A.shape))

    def torch_indices(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(crow_indices, col_indices) as int64 tensors on ``device`` (cached per device)."""
        key = str(torch.device(device))
        cache = self.__dict__.setdefault("_torch_cache", {})
        if key not in cache:
            cache[key] = (
                torch.as_tensor(self.indptr, device=device),
                torch.as_tensor(self.indices, device=device),
            )
        return cache[key]


class BatchedCSR:
    """A batch of matrices sharing one :class:`CSRPattern`; ``values`` has shape (B, nnz).

    ``values`` may require grad; :meth:`matvec` is differentiable in both ``values`` and ``x``.
    """

    def __init__(self, pattern: CSRPattern, values: torch.Tensor):
        if values.dim() == 1:
            values = values.unsqueeze(0)
        if values.dim() != 2 or values.shape[-1] != pattern.nnz:
            raise ShapeError(
                f"BatchedCSR values must have shape (batch, nnz={pattern.nnz}); got {tuple(values.shape)}"
            )
        self.pattern = pattern
        self.values = values

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.values.shape[0], *self.pattern.shape)

    @property
    def batch_size(self) -> int:
        return int(self.values.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def torch_csr(self, b: int = 0) -> torch.Tensor:
        """Sample ``b`` as a ``torch.sparse_csr_tensor`` (gradients flow to its values)."""
        crow, col = self.pattern.torch_indices(self.device)
        return torch.sparse_csr_tensor(crow, col, self.values[b], self.pattern.shape)

    def to_scipy(self, b: int = 0) -> sp.csr_matrix:
        return self.pattern.to_scipy(self.values[b].detach().cpu().numpy())

    def to_dense(self) -> torch.Tensor:
        """Dense (B, n_rows, n_cols) copy, differentiable in ``values``."""
        n, m = self.pattern.shape
        rows = torch.as_tensor(self.pattern.rows, device=self.device)
        cols = torch.as_tensor(self.pattern.indices, device=self.device)
        out = self.values.new_zeros(self.batch_size, n * m)
        out = out.index_put((torch.arange(self.batch_size, device=self.device)[:, None], (rows * m + cols)[None, :]),
                            self.values, accumulate=True)
        return out.reshape(self.batch_size, n, m)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A_b @ x_b`` for x of shape (B, n_cols) (or (n_cols,), broadcast over the batch)."""
        if x.dim() == 1:
            x = x.expand(self.batch_size, -1)
        rows = torch.as_tensor(self.pattern.rows, device=self.device)
        cols = torch.as_tensor(self.pattern.indices, device=self.device)
        prod = self.values * x[:, cols]
        out = prod.new_zeros(prod.shape[0], self.pattern.shape[0])
        return out.index_add(1, rows, prod)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """``A_b^T @ y_b`` for y of shape (B, n_rows)."""
        if y.dim() == 1:
            y = y.expand(self.batch_size, -1)
        rows = torch.as_tensor(self.pattern.rows, device=self.device)
        cols = torch.as_tensor(self.pattern.indices, device=self.device)
        prod = self.values * y[:, rows]
        out = prod.new_zeros(prod.shape[0], self.pattern.shape[1])
        return out.index_add(1, cols, prod)

    def transpose(self) -> "BatchedCSR":
        perm = torch.as_tensor(self.pattern.transpose_permutation, device=self.device)
        return BatchedCSR(self.pattern.transpose_pattern, self.values[:, perm])

    def __repr__(self) -> str:
        return f"BatchedCSR(batch={self.batch_size}, shape={self.pattern.shape}, nnz={self.pattern.nnz}, dtype={self.dtype})"
