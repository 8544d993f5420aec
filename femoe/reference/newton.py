"""The reference Newton solves: float64, one sample, on the free DOFs, over the shared loop.

:func:`solve` and :func:`solve_transient` are front ends of :func:`femoe.layers.newton` (the one
Newton loop femoe has): the Dirichlet values are imposed on the initial guess and the Dirichlet
DOFs eliminated, so the system solved, and the residual tested, is the free rows ``R_F(u)`` with
the Jacobian ``J_FF``; the linear solver comes from :func:`femoe.linalg.make_solver` without
dense factorisations (SuperLU up to ``AMG_MIN_N`` unknowns, AMG-CG above for symmetric systems).
Unconverged solves raise by default (``strict=True``): a data generator must never store one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from femoe.errors import ProblemError
from femoe.layers import REFERENCE_NEWTON, NewtonInfoBase, NewtonSolveInfo, NewtonSystem, check_newton, newton
from femoe.layers import newton_options
from femoe.problem import Problem
from femoe.reference.linear import reference_linear_opts
from femoe.sparse import BatchedCSR


@dataclass(frozen=True)
class NewtonInfo(NewtonInfoBase):
    """What a reference Newton solve did (:class:`~femoe.layers.NewtonInfoBase`, one sample).

    ``residual_norms`` (the same list as ``residual_history``) is the free-row residual norm
    after ``k`` steps; ``linear_iterations`` per step (1 for direct solves); ``linear_setups`` the
    factorisations (or AMG hierarchies) built."""

    linear_iterations: list[int] = field(default_factory=list)
    linear_solver: str = ""
    seconds: float = 0.0
    line_search_steps: int = 0
    linear_setups: int = 0

    @property
    def residual_norms(self) -> list[float]:
        return self.residual_history

    @classmethod
    def of_sample(cls, info: NewtonSolveInfo, seconds: float, b: int = 0) -> "NewtonInfo":
        """Sample ``b`` of a batched :class:`~femoe.layers.NewtonSolveInfo`, as Python numbers."""
        steps = int(info.iterations[b])
        return cls(bool(info.converged[b]), steps, info.residual_history[b, :steps + 1].tolist(), info.reason[b],
                   [max(1, int(k)) for k in info.linear_iterations[b, :steps]], info.linear_solver, seconds,
                   int(info.line_search_steps[b]), info.linear_setups)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "residual_norms": self.residual_norms}


def _torch_params(params, device="cpu"):
    out = {}
    for k, v in (params or {}).items():
        if isinstance(v, np.ndarray):
            v = torch.as_tensor(v, dtype=torch.float64)
        out[k] = v.detach().to(device, torch.float64) if isinstance(v, torch.Tensor) else v
    return out


def _reference_options(atol, rtol, maxiter, linear_solver, line_search, max_jacobian_age, linear_opts,
                       probes=None, what=None):
    return newton_options(atol, rtol, maxiter, linear_solver, line_search, reference_linear_opts(linear_opts),
                          probes, what,
                          max_jacobian_age=int(max_jacobian_age), **REFERENCE_NEWTON)


class _FreeRows:
    """``R_F`` and ``J_FF`` of a full residual ``F(u, jacobian)`` with the Dirichlet DOFs held at the
    values of ``u`` (the sub-pattern of ``J_FF`` is taken from the first Jacobian, then reused)."""

    def __init__(self, F: Callable, free: np.ndarray):
        self.F = F
        self.free = torch.as_tensor(free, dtype=torch.int64)
        self.u = None
        self._sub = None

    def full(self, x: torch.Tensor) -> torch.Tensor:
        return self.u.index_copy(0, self.free, x.reshape(-1))

    def residual(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        return self.F(self.full(x), False).reshape(1, -1).index_select(1, self.free)

    def residual_and_jacobian(self, x: torch.Tensor, p: dict) -> tuple[torch.Tensor, BatchedCSR]:
        R, J = self.F(self.full(x), True)
        if self._sub is None:
            pattern, pos = J.pattern.principal_submatrix(self.free.numpy())
            self._sub = pattern, torch.as_tensor(pos)
        pattern, pos = self._sub
        return R.reshape(1, -1).index_select(1, self.free), BatchedCSR(pattern, J.values.index_select(1, pos))

    def solve(self, u: np.ndarray, opts, strict: bool) -> tuple[np.ndarray, NewtonInfo]:
        t0 = time.perf_counter()
        self.u = torch.as_tensor(u, dtype=torch.float64)
        system = NewtonSystem(self.residual, self.residual_and_jacobian, [], {}, opts, [])
        with torch.no_grad():
            x, _, batched = newton(system, self.u.index_select(0, self.free)[None], {}, jacobian_at_root=False)
        info = NewtonInfo.of_sample(batched, time.perf_counter() - t0)
        check_newton(info, strict, opts.what)
        return self.full(x[0]).numpy(), info


def solve(problem: Problem, params: Mapping[str, Any] | None = None, u0: np.ndarray | None = None, *,
          t: float | None = None, atol: float = 1e-10, rtol: float = 1e-10, maxiter: int = 50,
          linear_solver: str = "auto", line_search: bool = True, strict: bool = True, max_jacobian_age: int = 1,
          **linear_opts) -> tuple[np.ndarray, NewtonInfo]:
    """Solve the steady problem ``R(u; p) = 0`` by Newton's method (:func:`femoe.layers.newton`).

    Parameters
    ----------
    problem
        The :class:`~femoe.problem.Problem`.
    params
        Parameter values for one sample (tensors or arrays without a batch axis, or batch 1).
    u0
        Initial guess (default zeros); Dirichlet values are imposed on it first.
    atol, rtol
        Stop when the free-row residual norm is below ``max(atol, rtol * initial norm)``.
    linear_solver
        ``"auto"`` (SuperLU, or AMG-CG for symmetric systems above ``AMG_MIN_N`` unknowns),
        ``"superlu"``, ``"amg-cg"``, ``"amg-gmres"`` or any name of :func:`femoe.linalg.make_solver`.
    strict
        Raise :class:`~femoe.errors.ConvergenceError` when Newton does not converge (default);
        otherwise warn and return the last iterate with ``info.converged = False``.
    max_jacobian_age
        Steps one factorisation may serve (:class:`~femoe.layers.NewtonOptions`; 1: Newton).
    **linear_opts
        Options of the linear solver (``tol`` or ``rtol``, ``maxiter`` for the AMG solvers).

    Returns
    -------
    u : ndarray (n,)
    info : NewtonInfo
    """
    p = _torch_params(params)
    u = np.zeros(problem.n) if u0 is None else np.array(u0, dtype=float)
    if u.shape != (problem.n,):
        raise ProblemError(f"u0 must have shape ({problem.n},); got {u.shape}")
    u[problem.dirichlet_dofs] = problem.dirichlet_values(p, t=t, batch=1)[0].numpy()

    def F(x, jac):
        return problem.residual_and_jacobian(x, p, t=t) if jac else problem.residual(x, p, t=t)

    what = f"problem {problem.name!r}"
    opts = _reference_options(atol, rtol, maxiter, linear_solver, line_search, max_jacobian_age, linear_opts,
                              problem.null_space_probes(problem.free_dofs), what)
    return _FreeRows(F, problem.free_dofs).solve(u, opts, strict)


def solve_transient(problem: Problem, u0: np.ndarray, dt: float, n_steps: int,
                    params: Mapping[str, Any] | None = None, *, t0: float = 0.0, save_every: int = 1,
                    atol: float = 1e-10, rtol: float = 1e-10, maxiter: int = 30, linear_solver: str = "auto",
                    line_search: bool = True, strict: bool = True, progress: bool = False, max_jacobian_age: int = 1,
                    **linear_opts) -> tuple[np.ndarray, np.ndarray, list[NewtonInfo]]:
    """March a time-dependent problem with the theta scheme, Newton at every step.

    The same Newton as :func:`solve` on each step's free rows. Returns ``(times, U, infos)`` with
    ``U`` of shape ``(n_saved, n)`` holding the initial level and every ``save_every``-th level
    after it.
    """
    if not problem.is_time_dependent:
        raise ProblemError(f"problem {problem.name!r} is steady; use femoe.reference.solve")
    if n_steps < 1 or save_every < 1 or n_steps % save_every:
        raise ProblemError(f"n_steps ({n_steps}) must be a positive multiple of save_every ({save_every})")
    p = _torch_params(params)
    u = np.array(u0, dtype=float).reshape(problem.n)
    times, saved, infos = [t0], [u.copy()], []
    steps = range(1, n_steps + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"{problem.name}", leave=False)
    step = None
    for k in steps:
        t_new = t0 + k * dt
        u_old = torch.as_tensor(u.copy())
        guess = u.copy()
        guess[problem.dirichlet_dofs] = problem.dirichlet_values(p, t=t_new, batch=1)[0].numpy()

        def F(x, jac, u_old=u_old, t_new=t_new):
            return problem.step_residual(x, u_old, dt, p, t_new=t_new, jacobian=jac)

        if step is None:
            step = _FreeRows(F, problem.free_dofs)
        step.F = F  # the sub-pattern of J_FF is the same at every step
        opts = _reference_options(atol, rtol, maxiter, linear_solver, line_search, max_jacobian_age, linear_opts,
                                  what=f"problem {problem.name!r}, step {k} (t = {t_new:g})")
        u, info = step.solve(guess, opts, strict)
        infos.append(info)
        if k % save_every == 0:
            times.append(t_new)
            saved.append(u.copy())
    return np.asarray(times), np.stack(saved), infos
