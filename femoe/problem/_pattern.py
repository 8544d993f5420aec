"""The sparsity pattern of a weak form's Jacobian and where every local entry lands in it."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from femoe.sparse import CSRPattern


class SparsityPattern:
    """The CSR pattern of the Jacobian of a weak form on ``n`` DOFs, and the CSR position of
    every entry the form's pieces contribute, computed once from their element-to-DOF maps.

    Owns
    ----
    csr
        The :class:`~femoe.sparse.CSRPattern` ``(n, n)``: every pair of DOFs that share a cell
        or a facet of a facet term, the entries of the fixed matrix, and the diagonal (always
        stored, so Dirichlet rows can hold their unit diagonal).
    cell_index
        CSR position of each cell-local Jacobian entry, in the order of
        ``cell_dofs`` ``(n_local, n_cells)``: element by element, row-major within an element.
    diag_index
        CSR position of each diagonal entry ``(i, i)``.
    facet_index
        One array per facet term, like ``cell_index`` for its ``facet_dofs``.
    matrix_index
        CSR position of each COO entry of the fixed matrix (``None`` without one).
    """

    def __init__(self, n: int, cell_dofs: np.ndarray, facet_dofs: Sequence[np.ndarray] = (), matrix=None):
        def local_keys(ed: np.ndarray) -> np.ndarray:
            rows = np.broadcast_to(ed.T[:, :, None], (ed.shape[1], ed.shape[0], ed.shape[0]))
            cols = np.broadcast_to(ed.T[:, None, :], rows.shape)
            return (rows.astype(np.int64) * n + cols).reshape(-1)

        self.n = int(n)
        parts = [local_keys(cell_dofs), np.arange(n, dtype=np.int64) * (n + 1)]
        parts += [local_keys(ed) for ed in facet_dofs]
        if matrix is not None:
            parts.append(matrix.row.astype(np.int64) * n + matrix.col)
        uniq, inverse = np.unique(np.concatenate(parts), return_inverse=True)
        prow, pcol = np.divmod(uniq, n)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.add.at(indptr, prow + 1, 1)
        self.csr = CSRPattern(np.cumsum(indptr), pcol.astype(np.int64), (n, n))
        sizes = np.cumsum([0] + [p.size for p in parts])
        self.cell_index = inverse[sizes[0] : sizes[1]]
        self.diag_index = inverse[sizes[1] : sizes[2]]
        self.facet_index = [inverse[sizes[2 + i] : sizes[3 + i]] for i in range(len(facet_dofs))]
        self.matrix_index = inverse[sizes[-2] : sizes[-1]] if matrix is not None else None

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return self.csr.nnz

    def matrix_values(self, matrix) -> np.ndarray:
        """The values of the fixed COO ``matrix`` this pattern was built with, on the pattern
        (duplicate COO entries summed)."""
        values = np.zeros(self.csr.nnz)
        np.add.at(values, self.matrix_index, matrix.data)
        return values
