"""Batched dense LU (``torch.linalg.lu_factor_ex``) for small general systems."""

from __future__ import annotations

import torch

from femoe.errors import SingularMatrixError
from femoe.linalg._base import LinearSolver
from femoe.linalg._dense_cholesky import pivot_ratio_check
from femoe.sparse import BatchedCSR


class DenseLUSolver(LinearSolver):
    """Factorise the dense copy of each batch element once with partial-pivoting LU.

    For general (nonsymmetric or indefinite) matrices up to a few thousand unknowns. The
    transpose solve reuses the factors through ``lu_solve(..., adjoint=True)``.

    Parameters
    ----------
    A : BatchedCSR
        Square matrices, batch ``B`` or 1.
    strict : bool
        Accepted for a uniform interface; direct solves always converge or raise.

    Raises
    ------
    SingularMatrixError
        Naming the first batch element with a zero (or numerically zero) pivot.
    """

    name = "dense_lu"
    options = ("strict",)

    def __init__(self, A: BatchedCSR, *, strict: bool = False):
        super().__init__(A, strict=strict)
        dense = BatchedCSR(A.pattern, self.values).to_dense()
        self.LU, self.pivots, status = torch.linalg.lu_factor_ex(dense)
        if bool((status > 0).any()):
            b = int((status > 0).nonzero()[0, 0])
            raise SingularMatrixError(
                f"solver {self.name!r}: batch element {b} of A is singular (zero pivot in column "
                f"{int(status[b]) - 1}); check the boundary conditions"
            )
        pivot_ratio_check(torch.diagonal(self.LU, dim1=-2, dim2=-1), self.name, "singular to working precision")

    def _solve(self, b: torch.Tensor, transpose: bool):
        batch = b.shape[0]
        LU = self.LU.expand(batch, -1, -1)
        pivots = self.pivots.expand(batch, -1)
        x = torch.linalg.lu_solve(LU, pivots, b, adjoint=transpose)
        return (x, *self._zero_iterations(batch, b.device))
