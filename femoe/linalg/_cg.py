"""Preconditioned conjugate gradients in torch, batched, for symmetric positive definite systems."""

from __future__ import annotations

import torch

from femoe.linalg._krylov import KrylovSolver


def _safe_div(num: torch.Tensor, den: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``mask`` and ``den != 0``, else 0 (frozen or broken-down columns)."""
    ok = mask & (den != 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


class CGSolver(KrylovSolver):
    """Preconditioned CG; the matrix (and preconditioner) must be symmetric positive definite.

    The transpose solve is the same solve (``A^T = A``).

    Parameters
    ----------
    A : BatchedCSR
        Symmetric positive definite matrices, batch ``B`` or 1.
    rtol, atol : float
        Stop a column when ``||b - A x|| <= max(rtol ||b||, atol)`` (recursive residual).
        ``rtol`` defaults to 1e-10 in float64 and 1e-5 in float32.
    maxiter : int, optional
        Iteration limit, default ``max(100, 2 n)``.
    preconditioner : {"jacobi", "amg", "none"}
        Built once at construction.
    strict : bool
        Raise :class:`femoe.errors.ConvergenceError` instead of warning when not converged.
    """

    name = "cg"
    requires_symmetric = True

    def _solve(self, b: torch.Tensor, transpose: bool):
        A = self.operator(False)
        M = self.preconditioner
        x = torch.zeros_like(b)
        r = b.clone()
        threshold = self.thresholds(b)
        active = torch.linalg.vector_norm(r, dim=1) > threshold
        iterations = torch.zeros(active.shape, dtype=torch.int64, device=b.device)
        z = M.apply(r)
        p = z.clone()
        rz = (r * z).sum(dim=1)
        for _ in range(self.maxiter):
            if not bool(active.any()):
                break
            Ap = A(p)
            alpha = _safe_div(rz, (p * Ap).sum(dim=1), active).unsqueeze(1)
            x = x + alpha * p
            r = r - alpha * Ap
            iterations += active
            active = active & (torch.linalg.vector_norm(r, dim=1) > threshold)
            z = M.apply(r)
            rz_new = (r * z).sum(dim=1)
            beta = _safe_div(rz_new, rz, active).unsqueeze(1)
            p = z + beta * p
            rz = rz_new
        return (x, *self.summarise(iterations, active))
