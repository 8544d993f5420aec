"""Newton's method with line search on femoe problems (reference solves)."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from femoe.errors import ConvergenceError, ConvergenceWarning, NonFiniteError, ProblemError
from femoe.linalg import check_nonsingular
from femoe.problem import Problem
from femoe.reference.linear import _is_symmetric, linear_solve

log = logging.getLogger(__name__)


@dataclass
class NewtonInfo:
    """What a Newton solve did: ``residual_norms[k]`` is the free-row residual norm after ``k``
    steps; ``linear_iterations`` per step (1 for direct solves)."""

    converged: bool = False
    iterations: int = 0
    residual_norms: list[float] = field(default_factory=list)
    linear_iterations: list[int] = field(default_factory=list)
    linear_solver: str = ""
    seconds: float = 0.0
    line_search_steps: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _torch_params(params, device="cpu"):
    out = {}
    for k, v in (params or {}).items():
        if isinstance(v, np.ndarray):
            v = torch.as_tensor(v, dtype=torch.float64)
        out[k] = v.detach().to(device, torch.float64) if isinstance(v, torch.Tensor) else v
    return out


def _newton(F, u: np.ndarray, free: np.ndarray, *, atol, rtol, maxiter, linear_solver, line_search,
            strict, what, linear_opts, probes=None) -> tuple[np.ndarray, NewtonInfo]:
    """Generic Newton loop. ``F(u, jacobian)`` returns (R, J or None) as numpy/scipy. ``probes``
    (``(vectors on the free DOFs, names)``) are checked against the null space of the first
    Jacobian: a singular system raises instead of returning an arbitrary solution."""
    info = NewtonInfo()
    t0 = time.perf_counter()
    R, J = F(u, True)
    norm = float(np.linalg.norm(R[free]))
    info.residual_norms.append(norm)
    target = max(atol, rtol * norm)
    symmetric = None
    while norm > target and info.iterations < maxiter:
        if not np.isfinite(norm):
            raise NonFiniteError(f"{what}: the residual became non-finite at Newton step {info.iterations}; "
                                 "reduce the time step or improve the initial guess")
        Jff = J[free][:, free]
        if probes is not None and info.iterations == 0:
            check_nonsingular(Jff, *probes, what)
        if symmetric is None:
            symmetric = _is_symmetric(Jff)
        du, lit, info.linear_solver = linear_solve(Jff, -R[free], linear_solver, symmetric=symmetric, **linear_opts)
        info.linear_iterations.append(lit)
        alpha = 1.0
        while True:
            trial = u.copy()
            trial[free] += alpha * du
            R_new, _ = F(trial, False)
            new_norm = float(np.linalg.norm(R_new[free]))
            if not line_search or (np.isfinite(new_norm) and new_norm <= (1 - 1e-4 * alpha) * norm) or alpha < 1e-3:
                break
            alpha *= 0.5
            info.line_search_steps += 1
        u, norm = trial, new_norm
        info.iterations += 1
        info.residual_norms.append(norm)
        if norm > target:
            R, J = F(u, True)
    info.converged = bool(norm <= target)
    info.seconds = time.perf_counter() - t0
    if not info.converged:
        msg = (f"{what}: Newton did not converge in {info.iterations} steps (residual {norm:.3e}, target "
               f"{target:.3e}); raise maxiter, improve the initial guess, or reduce the time step")
        if strict:
            raise ConvergenceError(msg, info=info)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    return u, info


def _to_np(problem: Problem, R: torch.Tensor, J=None):
    return R.detach().numpy()[0] if R.dim() == 2 else R.detach().numpy(), (None if J is None else J.to_scipy(0))


def solve(problem: Problem, params: Mapping[str, Any] | None = None, u0: np.ndarray | None = None, *,
          t: float | None = None, atol: float = 1e-10, rtol: float = 1e-10, maxiter: int = 50,
          linear_solver: str = "auto", line_search: bool = True, strict: bool = True,
          **linear_opts) -> tuple[np.ndarray, NewtonInfo]:
    """Solve the steady problem ``R(u; p) = 0`` by Newton's method.

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
        ``"auto"``, ``"superlu"``, ``"amg-cg"`` or ``"amg-gmres"``.
    strict
        Raise :class:`~femoe.errors.ConvergenceError` when Newton does not converge (default);
        otherwise warn and return the last iterate with ``info.converged = False``.

    Returns
    -------
    u : ndarray (n,)
    info : NewtonInfo
    """
    p = _torch_params(params)
    u = np.zeros(problem.n) if u0 is None else np.array(u0, dtype=float)
    if u.shape != (problem.n,):
        raise ProblemError(f"u0 must have shape ({problem.n},); got {u.shape}")
    g = problem.dirichlet_values(p, t=t, batch=1)[0].numpy()
    u[problem.dirichlet_dofs] = g

    def F(x, jac):
        xt = torch.as_tensor(x)
        with torch.no_grad():
            if jac:
                return _to_np(problem, *problem.residual_and_jacobian(xt, p, t=t))
            return _to_np(problem, problem.residual(xt, p, t=t))

    return _newton(F, u, problem.free_dofs, atol=atol, rtol=rtol, maxiter=maxiter, linear_solver=linear_solver,
                   line_search=line_search, strict=strict, what=f"problem {problem.name!r}", linear_opts=linear_opts,
                   probes=problem.null_space_probes(problem.free_dofs))


def solve_transient(problem: Problem, u0: np.ndarray, dt: float, n_steps: int,
                    params: Mapping[str, Any] | None = None, *, t0: float = 0.0, save_every: int = 1,
                    atol: float = 1e-10, rtol: float = 1e-10, maxiter: int = 30, linear_solver: str = "auto",
                    line_search: bool = True, strict: bool = True, progress: bool = False,
                    **linear_opts) -> tuple[np.ndarray, np.ndarray, list[NewtonInfo]]:
    """March a time-dependent problem with the theta scheme, Newton at every step.

    Returns ``(times, U, infos)`` with ``U`` of shape ``(n_saved, n)`` holding the initial
    level and every ``save_every``-th level after it.
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
    for k in steps:
        t_new = t0 + k * dt
        u_old_t = torch.as_tensor(u.copy())
        guess = u.copy()
        guess[problem.dirichlet_dofs] = problem.dirichlet_values(p, t=t_new, batch=1)[0].numpy()

        def F(x, jac, u_old_t=u_old_t, t_new=t_new):
            with torch.no_grad():
                out = problem.step_residual(torch.as_tensor(x), u_old_t, dt, p, t_new=t_new, jacobian=jac)
            return _to_np(problem, *out) if jac else _to_np(problem, out)

        u, info = _newton(F, guess, problem.free_dofs, atol=atol, rtol=rtol, maxiter=maxiter,
                          linear_solver=linear_solver, line_search=line_search, strict=strict,
                          what=f"problem {problem.name!r}, step {k} (t = {t_new:g})", linear_opts=linear_opts)
        infos.append(info)
        if k % save_every == 0:
            times.append(t_new)
            saved.append(u.copy())
    return np.asarray(times), np.stack(saved), infos
