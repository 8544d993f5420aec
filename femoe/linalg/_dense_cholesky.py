"""Batched dense Cholesky (``torch.linalg.cholesky_ex``) for small symmetric positive definite systems."""

from __future__ import annotations

import torch

from femoe.errors import SingularMatrixError
from femoe.linalg._base import LinearSolver
from femoe.sparse import BatchedCSR


def pivot_ratio_check(diag: torch.Tensor, name: str, what: str) -> None:
    """Raise :class:`SingularMatrixError` where ``min|d| / max|d| < n eps`` for ``(B, n)`` pivots.

    A factorisation can succeed on a matrix that is singular to working precision (round-off
    leaves a tiny nonzero pivot); its solution would then be garbage rather than NaN.
    """
    d = diag.abs()
    n = d.shape[-1]
    if n == 0:
        return
    ratio = d.amin(dim=-1) / d.amax(dim=-1).clamp_min(torch.finfo(d.dtype).tiny)
    bad = ratio <= n * torch.finfo(d.dtype).eps
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise SingularMatrixError(
            f"solver {name!r}: batch element {b} of A is {what} "
            f"(pivot ratio {float(ratio[b]):.3g}); check the boundary conditions"
        )


class DenseCholeskySolver(LinearSolver):
    """Factorise the dense copy of each batch element once with Cholesky; solve with ``cholesky_solve``.

    For symmetric positive definite matrices up to a few thousand unknowns (cost ``B n^3 / 3``,
    memory ``B n^2``); fastest choice for many small patches, on CPU and GPU. The transpose
    solve is the same solve.

    Parameters
    ----------
    A : BatchedCSR
        Symmetric positive definite matrices, batch ``B`` or 1.
    strict : bool
        Accepted for a uniform interface; direct solves always converge or raise.

    Raises
    ------
    SingularMatrixError
        Naming the first batch element that is not positive definite.
    ConfigError
        If ``A`` is not symmetric.
    """

    name = "dense_cholesky"
    options = ("strict",)
    requires_symmetric = True

    def __init__(self, A: BatchedCSR, *, strict: bool = False):
        super().__init__(A, strict=strict)
        dense = BatchedCSR(A.pattern, self.values).to_dense()
        self.L, status = torch.linalg.cholesky_ex(dense)
        if bool((status > 0).any()):
            b = int((status > 0).nonzero()[0, 0])
            raise SingularMatrixError(
                f"solver {self.name!r}: batch element {b} of A is not positive definite "
                f"(leading minor of order {int(status[b])} fails); use 'dense_lu' for indefinite matrices"
            )
        # squared pivots compare like LU pivots of A
        pivot_ratio_check(torch.diagonal(self.L, dim1=-2, dim2=-1) ** 2, self.name, "singular to working precision")

    def _solve(self, b: torch.Tensor, transpose: bool):
        L = self.L.expand(b.shape[0], -1, -1)
        x = torch.cholesky_solve(b, L)
        return (x, *self._zero_iterations(b.shape[0], b.device))
