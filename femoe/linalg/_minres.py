"""Preconditioned MINRES in torch, batched, for symmetric (possibly indefinite) systems.

The recurrences follow Paige and Saunders (1975) as in ``scipy.sparse.linalg.minres``, with one
set of scalars per batch element and right-hand-side column.
"""

from __future__ import annotations

import torch

from femoe.errors import ConfigError
from femoe.linalg._cg import _safe_div
from femoe.linalg._krylov import KrylovSolver


class MINRESSolver(KrylovSolver):
    """Preconditioned MINRES; the matrix must be symmetric, the preconditioner positive definite.

    Stops a column when the preconditioned residual estimate ``||r||_{M^{-1}}`` falls below
    ``max(rtol ||b||_{M^{-1}}, atol)``; ``info.residual_norms`` reports the true residual. The
    transpose solve is the same solve (``A^T = A``).

    Parameters
    ----------
    A : BatchedCSR
        Symmetric matrices, batch ``B`` or 1.
    rtol, atol : float
        ``rtol`` defaults to 1e-10 in float64 and 1e-5 in float32.
    maxiter : int, optional
        Iteration limit, default ``max(100, 2 n)``.
    preconditioner : {"jacobi", "amg", "none"}
        Must be symmetric positive definite (Jacobi needs a positive diagonal).
    strict : bool
        Raise :class:`femoe.errors.ConvergenceError` instead of warning when not converged.
    """

    name = "minres"
    requires_symmetric = True

    def _solve(self, b: torch.Tensor, transpose: bool):
        A = self.operator(False)
        M = self.preconditioner
        x = torch.zeros_like(b)
        r1 = b.clone()
        y = M.apply(r1)
        beta1_sq = (r1 * y).sum(dim=1)
        if bool((beta1_sq < 0).any()):
            raise ConfigError("minres needs a positive definite preconditioner; got r^T M^{-1} r < 0")
        beta1 = beta1_sq.sqrt()
        threshold = (self.rtol * beta1).clamp_min(self.atol)
        active = beta1 > threshold
        iterations = torch.zeros(active.shape, dtype=torch.int64, device=b.device)

        zeros = torch.zeros_like(beta1)
        oldb, beta, dbar, epsln, phibar = zeros, beta1, zeros, zeros, beta1
        cs, sn = -torch.ones_like(beta1), zeros
        w = torch.zeros_like(b)
        w2 = torch.zeros_like(b)
        r2 = r1
        tiny = torch.finfo(b.dtype).eps
        for itn in range(self.maxiter):
            if not bool(active.any()):
                break
            v = y * _safe_div(torch.ones_like(beta), beta, active).unsqueeze(1)
            y = A(v)
            if itn > 0:
                y = y - _safe_div(beta, oldb, active).unsqueeze(1) * r1
            alfa = (v * y).sum(dim=1)
            y = y - _safe_div(alfa, beta, active).unsqueeze(1) * r2
            r1, r2 = r2, y
            y = M.apply(r2)
            oldb = beta
            beta = (r2 * y).sum(dim=1).clamp_min(0).sqrt()
            # previous rotation
            oldeps = epsln
            delta = cs * dbar + sn * alfa
            gbar = sn * dbar - cs * alfa
            epsln = sn * beta
            dbar = -cs * beta
            # next rotation
            gamma = torch.hypot(gbar, beta).clamp_min(tiny)
            cs = gbar / gamma
            sn = beta / gamma
            phi = cs * phibar
            phibar = torch.where(active, sn * phibar, phibar)
            w1, w2 = w2, w
            w = (v - oldeps.unsqueeze(1) * w1 - delta.unsqueeze(1) * w2) / gamma.unsqueeze(1)
            # frozen columns carry garbage scalars; torch.where keeps it out of x
            x = torch.where(active.unsqueeze(1), x + phi.unsqueeze(1) * w, x)
            iterations += active
            active = active & (phibar > threshold) & (beta > 0)
        return (x, *self.summarise(iterations, active))
