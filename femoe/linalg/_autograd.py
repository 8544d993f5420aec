"""The differentiable sparse solve ``x = A(theta)^{-1} b(theta)`` with an adjoint backward."""

from __future__ import annotations

from typing import Any, Union

import torch
from torch.autograd.function import once_differentiable

from femoe.errors import ShapeError
from femoe.linalg._base import LinearSolver, SolveInfo, check_matrix, pattern_cache
from femoe.linalg._registry import make_solver
from femoe.sparse import BatchedCSR, CSRPattern


def _coo_indices(pattern: CSRPattern, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cache = pattern_cache(pattern)
    key = ("coo", str(device))
    if key not in cache:
        cache[key] = (
            torch.as_tensor(pattern.rows, device=device),
            torch.as_tensor(pattern.indices, device=device),
        )
    return cache[key]


class _SparseSolve(torch.autograd.Function):
    """Forward: set up ``solver`` on ``A`` and solve; backward: one adjoint solve with it."""

    @staticmethod
    def forward(ctx, values, b, pattern, solver_name, opts, info_out):
        solver = make_solver(solver_name, BatchedCSR(pattern, values.detach()), **opts)
        x, info = solver.solve(b.detach())
        info_out.append(info)
        ctx.solver = solver
        ctx.pattern = pattern
        ctx.batch = (values.shape[0], b.shape[0])
        ctx.save_for_backward(x)
        return x

    # For A x = b, differentiate: dA x + A dx = db, so dx = A^{-1} (db - dA x). For a loss L
    # with g = dL/dx,
    #     dL = g^T dx = lam^T (db - dA x),   where   A^T lam = g   (one adjoint solve).
    # Hence dL/db = lam and dL/dA = -lam x^T; only the stored entries of A are parameters, so
    #     dL/dvalues[k] = -lam[row_k] * x[col_k]     (summed over right-hand-side columns).
    # A batch dimension broadcast in forward (A or b of batch 1) is summed out of its gradient.
    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):
        (x,) = ctx.saved_tensors
        need_values, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_values or need_b):
            return None, None, None, None, None, None
        lam, _ = ctx.solver.solve(grad_x.contiguous(), transpose=True)
        batch_values, batch_b = ctx.batch
        grad_values = grad_b = None
        if need_b:
            grad_b = lam.sum(dim=0, keepdim=True) if batch_b == 1 and lam.shape[0] != 1 else lam
        if need_values and lam.device.type == "cpu":
            # numpy: single-threaded gather, immune to torch thread contention on busy CPUs
            rows, cols = ctx.pattern.rows, ctx.pattern.indices
            ln, xn = lam.numpy(), x.detach().numpy()
            g = ln[:, rows] * xn[:, cols]
            grad_values = torch.from_numpy(-(g if g.ndim == 2 else g.sum(axis=-1)))
            if batch_values == 1 and grad_values.shape[0] != 1:
                grad_values = grad_values.sum(dim=0, keepdim=True)
        elif need_values:
            rows, cols = _coo_indices(ctx.pattern, lam.device)
            if lam.dim() == 2:
                grad_values = -(lam[:, rows] * x[:, cols])
            else:
                grad_values = -(lam[:, rows, :] * x[:, cols, :]).sum(dim=-1)
            if batch_values == 1 and grad_values.shape[0] != 1:
                grad_values = grad_values.sum(dim=0, keepdim=True)
        return grad_values, grad_b, None, None, None, None


def sparse_solve(
    A: BatchedCSR,
    b: torch.Tensor,
    solver: str = "auto",
    return_info: bool = False,
    **opts: Any,
) -> Union[torch.Tensor, tuple[torch.Tensor, SolveInfo]]:
    """Solve ``A x = b``, differentiably in ``A.values`` and ``b``.

    The backward pass is one adjoint solve ``A^T lam = dL/dx`` that reuses the factorisation or
    preconditioner built in the forward pass; the gradient of ``A.values`` lives on the
    sparsity pattern only. Iterative solvers are never unrolled.

    Parameters
    ----------
    A : BatchedCSR
        Square matrices, batch ``B`` or 1; ``A.values`` may require grad.
    b : torch.Tensor
        ``(B, n)`` or ``(B, n, k)`` (batch 1 broadcast against ``A``), same dtype and device as
        ``A``; may require grad.
    solver : str
        A name from :func:`femoe.linalg.available_solvers`; ``"auto"`` picks by size, symmetry
        and device.
    return_info : bool
        Also return the forward solve's :class:`SolveInfo`.
    **opts
        Options of the solver (see :func:`femoe.linalg.make_solver`).

    Returns
    -------
    x : torch.Tensor
        Shape of ``b`` with the broadcast batch.
    info : SolveInfo
        Only with ``return_info=True``.

    Raises
    ------
    ShapeError, ConfigError, SingularMatrixError, ConvergenceError
        See :class:`femoe.linalg.LinearSolver`.
    """
    check_matrix(A)
    if not isinstance(b, torch.Tensor):
        raise ShapeError(f"b must be a torch.Tensor; got {type(b).__name__}")
    if torch.is_grad_enabled() and (A.values.requires_grad or b.requires_grad):
        info_out: list[SolveInfo] = []
        x = _SparseSolve.apply(A.values, b, A.pattern, solver, dict(opts), info_out)
        info = info_out[0]
    else:
        x, info = make_solver(solver, BatchedCSR(A.pattern, A.values.detach()), **opts).solve(b.detach())
    return (x, info) if return_info else x


class _FixedSolve(torch.autograd.Function):
    """``x = A^{-1} b`` with a solver already set up on a constant ``A``; backward: ``A^{-T} g``."""

    @staticmethod
    def forward(ctx, b, solver):
        ctx.solver = solver
        return solver.solve(b.detach())[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):
        return ctx.solver.solve(grad_x.contiguous(), transpose=True)[0], None


def solve_with(solver: LinearSolver, b: torch.Tensor) -> torch.Tensor:
    """Solve ``A x = b`` with ``solver`` (from :func:`make_solver`, set up once on a matrix that does
    not change), differentiably in ``b``: the backward is one transposed solve with the same
    factorisation or preconditioner. Where ``A`` itself needs a gradient, use :func:`sparse_solve`,
    which sets the solver up on every call."""
    if not isinstance(b, torch.Tensor):
        raise ShapeError(f"b must be a torch.Tensor; got {type(b).__name__}")
    if torch.is_grad_enabled() and b.requires_grad:
        return _FixedSolve.apply(b, solver)
    return solver.solve(b)[0]
