"""Preconditioners for the torch Krylov solvers: a name -> class registry.

A preconditioner is built once from the matrix and applied as ``z = M^{-1} r`` to ``(B, n, k)``
residuals; ``transpose=True`` applies ``M^{-T}`` for the adjoint solve.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import torch

from femoe.errors import ConfigError, SingularMatrixError
from femoe.linalg._base import symmetric_mask
from femoe.sparse import BatchedCSR

logger = logging.getLogger(__name__)


class Preconditioner:
    """Base class: identity (the ``"none"`` preconditioner)."""

    name: ClassVar[str] = "none"

    def __init__(self, A: BatchedCSR):
        self.batch_size = A.batch_size

    def apply(self, r: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``M^{-1} r`` (or ``M^{-T} r``) for ``(B, n, k)`` r."""
        return r


class JacobiPreconditioner(Preconditioner):
    """``M = diag(A)``, the same for ``A`` and ``A^T``; runs on any device.

    Raises
    ------
    SingularMatrixError
        If a diagonal entry is zero or missing from the pattern.
    """

    name = "jacobi"

    def __init__(self, A: BatchedCSR):
        super().__init__(A)
        pos = A.pattern.diagonal_positions
        values = A.values.detach()
        diag = values.new_zeros(values.shape[0], A.pattern.shape[0])
        present = torch.as_tensor(pos >= 0, device=values.device)
        diag[:, present] = values[:, torch.as_tensor(pos[pos >= 0], device=values.device)]
        zero = diag == 0
        if bool(zero.any()):
            b, i = (int(v) for v in zero.nonzero()[0])
            raise SingularMatrixError(
                f"preconditioner 'jacobi': diagonal entry {i} of batch element {b} of A is zero; "
                "use preconditioner='none' or 'amg', or a direct solver"
            )
        self.inv_diag = (1.0 / diag).unsqueeze(-1)

    def apply(self, r: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        return r * self.inv_diag


class AMGPreconditioner(Preconditioner):
    """One V-cycle of a pyamg smoothed-aggregation hierarchy per batch element (CPU, float64).

    The hierarchies are built once. With pyamg's default symmetric Gauss-Seidel smoothing the
    V-cycle of a symmetric matrix is a symmetric operator, so the same cycle serves ``A^T``;
    for a nonsymmetric matrix the cycle built for ``A`` is still a valid (if weaker) right
    preconditioner for ``A^T`` in GMRES. Residuals on another device are copied to the CPU.
    """

    name = "amg"

    def __init__(self, A: BatchedCSR):
        super().__init__(A)
        import pyamg

        symmetric = symmetric_mask(A).cpu().numpy()
        values = A.values.detach().cpu().numpy().astype(np.float64, copy=False)
        self.operators = []
        for b in range(values.shape[0]):
            mat = A.pattern.to_scipy(values[b])
            ml = pyamg.smoothed_aggregation_solver(
                mat, symmetry="hermitian" if symmetric[b] else "nonsymmetric"
            )
            logger.debug("AMG hierarchy for batch element %d: %d levels", b, len(ml.levels))
            self.operators.append(ml.aspreconditioner(cycle="V"))

    def apply(self, r: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        batch, n, k = r.shape
        rhs = r.detach().cpu().numpy().astype(np.float64, copy=False)
        out = np.empty_like(rhs)
        for i in range(batch):
            op = self.operators[i if len(self.operators) > 1 else 0]
            for j in range(k):
                out[i, :, j] = op.matvec(rhs[i, :, j])
        return torch.from_numpy(out).to(device=r.device, dtype=r.dtype)


PRECONDITIONERS: dict[str, type[Preconditioner]] = {
    cls.name: cls for cls in (Preconditioner, JacobiPreconditioner, AMGPreconditioner)
}


def make_preconditioner(name: str, A: BatchedCSR) -> Preconditioner:
    """Build the preconditioner registered under ``name`` for ``A``.

    Raises
    ------
    ConfigError
        For an unknown name, listing the valid ones.
    """
    if name not in PRECONDITIONERS:
        raise ConfigError(f"Unknown preconditioner {name!r}. Pick one of {sorted(PRECONDITIONERS)}")
    return PRECONDITIONERS[name](A)
