"""Common set-up of the torch Krylov solvers (CG, MINRES, GMRES).

The iterations run on ``(B, n, k)`` tensors with one set of scalars per batch element and
right-hand-side column, so every column has its own convergence; finished columns are frozen
(their step lengths set to zero) and the loop ends when all have converged.
"""

from __future__ import annotations

from typing import Optional

import torch

from femoe.errors import ConfigError
from femoe.linalg._base import LinearSolver, csr_operator, default_rtol
from femoe.linalg._preconditioners import make_preconditioner
from femoe.sparse import BatchedCSR


class KrylovSolver(LinearSolver):
    """Base of the torch Krylov solvers; see the subclasses for the parameters."""

    options = ("rtol", "atol", "maxiter", "preconditioner", "strict")

    def __init__(
        self,
        A: BatchedCSR,
        *,
        rtol: Optional[float] = None,
        atol: float = 0.0,
        maxiter: Optional[int] = None,
        preconditioner: str = "jacobi",
        strict: bool = False,
    ):
        super().__init__(A, strict=strict)
        self.rtol = default_rtol(self.values.dtype) if rtol is None else float(rtol)
        self.atol = float(atol)
        if self.rtol < 0 or self.atol < 0:
            raise ConfigError(f"rtol and atol must be >= 0; got rtol={self.rtol}, atol={self.atol}")
        self.maxiter = max(100, 2 * self.n) if maxiter is None else int(maxiter)
        if self.maxiter < 1:
            raise ConfigError(f"maxiter must be >= 1; got {maxiter}")
        self.preconditioner = make_preconditioner(preconditioner, BatchedCSR(A.pattern, self.values))
        self._operators: dict[bool, object] = {}

    def operator(self, transpose: bool):
        """``x -> A x`` (or ``A^T x``) on ``(B, n, k)`` tensors, built once per direction."""
        if transpose not in self._operators:
            self._operators[transpose] = csr_operator(
                self.A.pattern, self.values, transpose and not bool(self.symmetric.all())
            )
        return self._operators[transpose]

    def matmul(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        return self.operator(transpose)(x)

    def thresholds(self, b: torch.Tensor) -> torch.Tensor:
        """``(B, k)`` absolute residual thresholds ``max(rtol ||b||, atol)``."""
        return (self.rtol * torch.linalg.vector_norm(b, dim=1)).clamp_min(self.atol)

    @staticmethod
    def summarise(iterations: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-column counters ``(B, k)`` -> per-batch iterations and converged flags ``(B,)``."""
        return iterations.amax(dim=1), ~active.any(dim=1)
