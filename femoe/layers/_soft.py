"""The soft-constraint baseline: the weak-form residual norm of a network field as a loss."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from femoe.errors import ConfigError, ShapeError
from femoe.layers._residuals import INITIAL, SteadyResidual, TrajectoryResidual
from femoe.layers._validate import check_finite, check_float_tensor, check_params_finite
from femoe.problem import Problem

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(r: torch.Tensor, weights: Any, reduction: str) -> torch.Tensor:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"Unknown reduction {reduction!r}. Pick one of {list(_REDUCTIONS)}")
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=r.dtype, device=r.device)
        try:
            r = weights * r
        except RuntimeError as err:
            raise ShapeError(f"weights must broadcast against the selected rows {tuple(r.shape)}; "
                             f"received {tuple(weights.shape)}") from err
    per_sample = (r * r).sum(dim=1)
    if reduction == "none":
        return per_sample
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def soft_residual_loss(problem: Problem, u_hat: torch.Tensor, params: Mapping[str, Any] | None = None, *,
                       rows: Any = None, weights: Any = None, t: float | None = None,
                       reduction: str = "mean") -> torch.Tensor:
    """``||W R(u_hat; p)[rows]||_2^2`` per sample: the weak-form residual as a soft constraint.

    Parameters
    ----------
    problem : Problem
        A steady problem (or a time-dependent one evaluated as ``A(u, t)``).
    u_hat : torch.Tensor
        Network field ``(batch, n)`` or ``(n,)``.
    params : mapping, optional
        Problem parameters.
    rows : index, optional
        Residual rows (default all, Dirichlet rows included).
    weights : tensor, optional
        Row weights ``W`` broadcast against ``(batch, len(rows))``.
    t : float, optional
        Time passed to the forms.
    reduction : ``"mean"``, ``"sum"`` or ``"none"``
        Over the batch; ``"none"`` returns ``(batch,)``.

    Returns
    -------
    torch.Tensor
        Differentiable in ``u_hat`` and the parameter tensors.
    """
    check_float_tensor("u_hat", u_hat)
    if u_hat.dim() not in (1, 2) or u_hat.shape[-1] != problem.n:
        raise ShapeError(f"u_hat must have shape (batch, {problem.n}) or ({problem.n},); received {tuple(u_hat.shape)}")
    check_finite("u_hat", u_hat)
    check_params_finite(params)
    model = SteadyResidual(problem, rows=rows, t=t, row_scale=None)
    u = u_hat.reshape(-1, problem.n)
    R = model.problem.residual(u, dict(params or {}), t=t).reshape(-1, problem.n)
    return _reduce(model._select(R), weights, reduction)


def soft_trajectory_loss(problem: Problem, U_hat: torch.Tensor, dt: float, params: Mapping[str, Any] | None = None,
                         *, u0: torch.Tensor | None = None, t0: float = 0.0, rows: Any = None, weights: Any = None,
                         ic_rows: Any = None, ic_weight: str | float | torch.Tensor = "paper",
                         reduction: str = "mean") -> torch.Tensor:
    """Soft constraint of a trajectory: theta-scheme rows of steps ``1..T`` (given level 0) and,
    when ``u0`` is given, initial-condition rows ``c (U_0 - u0)``, squared and summed per sample.

    ``U_hat`` has shape ``(batch, T + 1, n)`` (levels ``0..T``); ``rows`` index the flattened
    ``T n`` step residual and ``weights`` broadcast against the selected rows (IC rows
    included, last). ``ic_rows``, ``ic_weight`` as in :class:`~femoe.layers.TrajectoryResidual`.
    """
    check_float_tensor("U_hat", U_hat)
    if U_hat.dim() != 3 or U_hat.shape[-1] != problem.n or U_hat.shape[1] < 2:
        raise ShapeError(f"U_hat must have shape (batch, T + 1 >= 2, {problem.n}); received {tuple(U_hat.shape)}")
    check_finite("U_hat", U_hat)
    check_params_finite(params)
    p = dict(params or {})
    if u0 is None:
        ic_rows = torch.zeros(0, dtype=torch.int64)  # cpu: an index set, moved to the data at use
        u0 = torch.zeros(1, problem.n, dtype=U_hat.dtype, device=U_hat.device)
    else:
        check_float_tensor("u0", u0)
        if u0.shape[-1] != problem.n or u0.dim() not in (1, 2):
            raise ShapeError(f"u0 must have shape (batch, {problem.n}) or ({problem.n},); received {tuple(u0.shape)}")
        check_finite("u0", u0)
    p[INITIAL] = u0.reshape(-1, problem.n)
    model = TrajectoryResidual(problem, dt, t0, rows=rows, ic_rows=ic_rows, ic_weight=ic_weight, row_scale=None)
    model.check_levels(U_hat.shape[1] - 1)
    return _reduce(model.residual(U_hat, p), weights, reduction)
