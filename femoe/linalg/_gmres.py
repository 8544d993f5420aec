"""Restarted, right-preconditioned GMRES in torch, batched, for general systems."""

from __future__ import annotations

from typing import Optional

import torch

from femoe.errors import ConfigError
from femoe.linalg._krylov import KrylovSolver
from femoe.sparse import BatchedCSR


class GMRESSolver(KrylovSolver):
    """GMRES(restart) with right preconditioning, so the monitored residual is the true one.

    Arnoldi uses classical Gram-Schmidt with reorthogonalisation and Givens rotations, one set per batch element and
    right-hand-side column. The transpose solve runs the same iteration on ``A^T`` with the
    same preconditioner (exact for Jacobi; for AMG the cycle built for ``A``).

    Parameters
    ----------
    A : BatchedCSR
        Square matrices, batch ``B`` or 1.
    rtol, atol : float
        Stop a column when ``||b - A x|| <= max(rtol ||b||, atol)``. ``rtol`` defaults to 1e-10
        in float64 and 1e-5 in float32.
    maxiter : int, optional
        Limit on the total number of inner iterations, default ``max(100, 2 n)``.
    restart : int, optional
        Krylov subspace size between restarts, default ``min(n, 50)``.
    preconditioner : {"jacobi", "amg", "none"}
        Built once at construction.
    strict : bool
        Raise :class:`femoe.errors.ConvergenceError` instead of warning when not converged.
    """

    name = "gmres"
    options = KrylovSolver.options + ("restart",)

    def __init__(self, A: BatchedCSR, *, restart: Optional[int] = None, **kwargs):
        super().__init__(A, **kwargs)
        self.restart = min(self.n, 50) if restart is None else int(restart)
        if self.restart < 1:
            raise ConfigError(f"restart must be >= 1; got {restart}")

    def _solve(self, b: torch.Tensor, transpose: bool):
        A = self.operator(transpose)
        M = self.preconditioner
        batch, n, k = b.shape
        m = max(1, min(self.restart, self.n))
        x = torch.zeros_like(b)
        threshold = self.thresholds(b)
        iterations = torch.zeros((batch, k), dtype=torch.int64, device=b.device)
        active = torch.linalg.vector_norm(b, dim=1) > threshold
        total = 0
        while total < self.maxiter and bool(active.any()):
            r = b - A(x)
            beta = torch.linalg.vector_norm(r, dim=1)
            active = active & (beta > threshold)
            if not bool(active.any()):
                break
            safe_beta = torch.where(beta > 0, beta, torch.ones_like(beta))
            V = b.new_zeros(batch, n, k, m + 1)
            V[..., 0] = r / safe_beta.unsqueeze(1)
            H = b.new_zeros(batch, k, m + 1, m)
            g = b.new_zeros(batch, k, m + 1)
            g[..., 0] = beta
            cs = b.new_zeros(batch, k, m)
            sn = b.new_zeros(batch, k, m)
            running = active.clone()
            steps = 0
            for j in range(min(m, self.maxiter - total)):
                w = A(M.apply(V[..., j], transpose))
                # classical Gram-Schmidt twice (CGS2): as stable as modified Gram-Schmidt, but
                # two batched reductions instead of j + 1 small ones
                basis = V[..., : j + 1]
                h = torch.einsum("bnkj,bnk->bkj", basis, w)
                w = w - torch.einsum("bnkj,bkj->bnk", basis, h)
                h2 = torch.einsum("bnkj,bnk->bkj", basis, w)
                w = w - torch.einsum("bnkj,bkj->bnk", basis, h2)
                H[..., : j + 1, j] = h + h2
                hn = torch.linalg.vector_norm(w, dim=1)
                H[..., j + 1, j] = hn
                V[..., j + 1] = w / torch.where(hn > 0, hn, torch.ones_like(hn)).unsqueeze(1)
                for i in range(j):
                    t = cs[..., i] * H[..., i, j] + sn[..., i] * H[..., i + 1, j]
                    H[..., i + 1, j] = -sn[..., i] * H[..., i, j] + cs[..., i] * H[..., i + 1, j]
                    H[..., i, j] = t
                denom = torch.hypot(H[..., j, j], H[..., j + 1, j])
                ok = denom > 0
                safe = torch.where(ok, denom, torch.ones_like(denom))
                cs[..., j] = torch.where(ok, H[..., j, j] / safe, torch.ones_like(denom))
                sn[..., j] = torch.where(ok, H[..., j + 1, j] / safe, torch.zeros_like(denom))
                H[..., j, j] = torch.where(ok, denom, torch.ones_like(denom))
                H[..., j + 1, j] = 0
                g[..., j + 1] = -sn[..., j] * g[..., j]
                g[..., j] = cs[..., j] * g[..., j]
                # Columns that finished earlier in this cycle get an identity column and a zero
                # right-hand side, so their least-squares solution stops at their own step.
                done = ~running
                if bool(done.any()):
                    e = torch.zeros(m + 1, dtype=b.dtype, device=b.device)
                    e[j] = 1
                    H[..., :, j] = torch.where(done.unsqueeze(-1), e, H[..., :, j])
                    g[..., j] = torch.where(done, torch.zeros_like(g[..., j]), g[..., j])
                    g[..., j + 1] = torch.where(done, torch.zeros_like(g[..., j]), g[..., j + 1])
                iterations += running
                steps = j + 1
                running = running & (g[..., j + 1].abs() > threshold)
                if not bool(running.any()):
                    break
            total += steps
            y = torch.linalg.solve_triangular(H[..., :steps, :steps], g[..., :steps].unsqueeze(-1), upper=True)
            update = M.apply(torch.einsum("bnkj,bkj->bnk", V[..., :steps], y.squeeze(-1)), transpose)
            x = x + torch.where(active.unsqueeze(1), update, torch.zeros_like(update))
        r = b - A(x)
        active = active & (torch.linalg.vector_norm(r, dim=1) > threshold)
        return (x, *self.summarise(iterations, active))
