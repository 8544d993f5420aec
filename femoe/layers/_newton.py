"""Differentiable nonlinear solves ``R(u*; p) = 0``: batched Newton forward, adjoint backward."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from femoe.errors import ConvergenceError, ConvergenceWarning, NonFiniteError, ProblemError, ShapeError
from femoe.layers._implicit import ImplicitProblem, implicit_root
from femoe.layers._validate import check_finite, check_float_tensor, check_params_finite, join_params, split_params
from femoe.linalg import check_nonsingular, make_solver
from femoe.problem import Problem
from femoe.sparse import BatchedCSR

log = logging.getLogger(__name__)

_U_OLD = "__u_old__"  # reserved key under which a time step passes u^{t-1} through the Function


@dataclass(frozen=True)
class NewtonSolveInfo:
    """What one batched Newton solve did, per sample.

    Attributes
    ----------
    converged : torch.Tensor
        ``(B,)`` bool: ``||R(u*)|| <= max(atol, rtol ||R(u_0)||)``.
    iterations : torch.Tensor
        ``(B,)`` int64 Newton steps taken.
    residual_norms : torch.Tensor
        ``(B,)`` final ``||R(u*)||_2`` (all rows, Dirichlet rows included).
    initial_residual_norms : torch.Tensor
        ``(B,)`` ``||R(u_0)||_2``.
    line_search_steps : torch.Tensor
        ``(B,)`` int64 step halvings in total.
    linear_solver : str
        Registry name of the linear solver of the last step (``"auto"`` resolved).
    """

    converged: torch.Tensor
    iterations: torch.Tensor
    residual_norms: torch.Tensor
    initial_residual_norms: torch.Tensor
    line_search_steps: torch.Tensor
    linear_solver: str

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


@dataclass
class NewtonSystem:
    """The residual of one nonlinear solve ``R(x; p) = 0``: two callables of ``(x, params)``
    (``residual`` and ``residual_and_jacobian``, the latter returning a :class:`BatchedCSR`), the
    parameters split into tensor names and static values (:func:`split_params`), Newton's options
    (:func:`newton_options`) and a list that receives the solve's :class:`NewtonSolveInfo`."""

    residual: Callable[[torch.Tensor, dict], torch.Tensor]
    residual_and_jacobian: Callable[[torch.Tensor, dict], tuple[torch.Tensor, BatchedCSR]]
    names: list[str]
    static: dict[str, Any]
    opts: NewtonOptions
    info: list


def _newton(system: NewtonSystem, u: torch.Tensor, p: dict) -> tuple[torch.Tensor, BatchedCSR, NewtonSolveInfo]:
    o = system.opts
    R, J = system.residual_and_jacobian(u, p)
    if o.probes is not None:
        check_nonsingular(J, *o.probes, o.what or "Newton")
    if R.shape[0] != u.shape[0]:
        u = u.expand(R.shape[0], -1)
    u = u.clone()
    norm = torch.linalg.vector_norm(R, dim=1)
    initial = norm.clone()
    target = torch.clamp(o.rtol * norm, min=o.atol)
    batch = u.shape[0]
    # every tensor made here lives on u's device: CUDA refuses to mix a 1-D CPU tensor in
    iterations = torch.zeros(batch, dtype=torch.int64, device=u.device)
    halvings = torch.zeros(batch, dtype=torch.int64, device=u.device)
    solver_name = o.linear_solver
    for _ in range(o.maxiter):
        active = norm > target
        if not bool(active.any()):
            break
        solver = make_solver(o.linear_solver, J, **o.linear_opts)
        solver_name = solver.name
        du, _ = solver.solve(-R)
        du = du * active[:, None]
        alpha = torch.ones(batch, dtype=u.dtype, device=u.device)
        while True:
            trial = u + alpha[:, None] * du
            new_norm = torch.linalg.vector_norm(system.residual(trial, p), dim=1)
            ok = ~active | (new_norm <= (1 - 1e-4 * alpha) * norm)
            if not o.line_search:
                ok = torch.ones_like(ok)
            small = alpha < o.min_step
            if bool((ok | small).all()):
                break
            step = ~(ok | small)
            alpha = torch.where(step, alpha / 2, alpha)
            halvings += step.to(torch.int64)
        if not bool(torch.isfinite(new_norm).all()):
            bad = int((~torch.isfinite(new_norm)).nonzero()[0, 0])
            raise NonFiniteError(
                f"the residual became non-finite at Newton step {int(iterations[bad]) + 1} for sample {bad}; "
                "improve the initial guess u0 or reduce the time step"
            )
        u = trial
        iterations += active.to(torch.int64)
        R, J = system.residual_and_jacobian(u, p)
        norm = torch.linalg.vector_norm(R, dim=1)
    info = NewtonSolveInfo(norm <= target, iterations, norm, initial, halvings, solver_name)
    return u, J, info


class NewtonRoot(ImplicitProblem):
    """Newton's root of ``R(x; p) = 0`` from ``x_init`` as an :class:`ImplicitProblem`: the
    optimality condition is the residual itself, so the adjoint is one solve with ``J(x*)^T``,
    the Jacobian of the last Newton iterate (the root), and the gradient is the vector-Jacobian
    product ``-lam^T dR/dp`` at ``x*`` held fixed; ``x*`` does not depend on ``x_init``."""

    def __init__(self, system: NewtonSystem, x_init: torch.Tensor):
        self.system = system
        self.x_init = x_init.detach()
        self._J: BatchedCSR | None = None

    def _p(self, inputs) -> dict:
        return join_params(self.system.names, list(inputs), self.system.static)

    def solve(self, inputs):
        x, self._J, info = _newton(self.system, self.x_init, self._p(inputs))
        self.system.info.append(info)
        return x

    def optimality(self, x, inputs):
        return self.system.residual(x, self._p(inputs))

    def adjoint(self, x, inputs, g, needs):
        o = self.system.opts
        lam, _ = make_solver(o.linear_solver, self._J, **o.linear_opts).solve(g, transpose=True)
        return lam


def check_newton(info: NewtonSolveInfo, strict: bool, what: str) -> None:
    """The unconverged-solve policy of every Newton solve: a :class:`ConvergenceWarning` naming
    the samples, or with ``strict`` a :class:`ConvergenceError`."""
    if info.all_converged:
        return
    failed = (~info.converged).nonzero().flatten().tolist()
    msg = (f"{what}: Newton did not converge for samples {failed} (residual norms "
           f"{info.residual_norms[~info.converged].tolist()}, iterations {info.iterations[~info.converged].tolist()}); "
           "raise maxiter, improve u0, or loosen atol/rtol")
    if strict:
        raise ConvergenceError(msg, info=info)
    warnings.warn(msg, ConvergenceWarning, stacklevel=3)


@dataclass(frozen=True)
class NewtonOptions:
    """Newton's settings (one object instead of keyword arguments mirrored by every caller).

    ``probes``: ``(vectors (k, n), names)`` checked against the null space of the first
    Jacobian (a singular system raises ``SingularMatrixError`` instead of being solved);
    ``what`` names the solve in that message."""

    atol: float = 1e-10
    rtol: float = 1e-10
    maxiter: int = 50
    linear_solver: str = "auto"
    line_search: bool = True
    min_step: float = 1e-4
    linear_opts: Mapping[str, Any] = field(default_factory=dict)
    probes: Any = None
    what: str | None = None

    def __post_init__(self):
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ProblemError(f"atol and rtol must be >= 0; got {self.atol}, {self.rtol}")
        if int(self.maxiter) < 0:
            raise ProblemError(f"maxiter must be >= 0; got {self.maxiter}")


def newton_options(atol, rtol, maxiter, linear_solver, line_search, linear_opts, probes=None,
                   what=None) -> NewtonOptions:
    """:class:`NewtonOptions` from the keyword arguments of the public solves and layers."""
    return NewtonOptions(float(atol), float(rtol), int(maxiter), linear_solver, bool(line_search), 1e-4,
                         dict(linear_opts), probes, what)


def _run(res, res_jac, names, static, info_out, u_init, tensors, squeeze, return_info, strict, what, opts):
    """The shared tail of the public solves: build the system, solve, report, shape the output."""
    u = implicit_root(NewtonRoot(NewtonSystem(res, res_jac, names, static, opts, info_out), u_init), *tensors)
    info = info_out[0]
    check_newton(info, strict, what)
    if squeeze and u.shape[0] == 1:
        u = u[0]
    return (u, info) if return_info else u


def _initial_guess(problem: Problem, u0, params: Mapping[str, Any], name: str) -> torch.Tensor:
    dtype = next((v.dtype for v in params.values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
                 torch.float64)
    device = next((v.device for v in params.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    if u0 is None:
        return torch.zeros(1, problem.n, dtype=dtype, device=device)
    check_float_tensor(name, u0)
    if u0.shape[-1] != problem.n or u0.dim() not in (1, 2):
        raise ShapeError(f"{name} must have shape (batch, {problem.n}) or ({problem.n},); got {tuple(u0.shape)}")
    check_finite(name, u0)
    return u0.reshape(-1, problem.n)


def nonlinear_solve(
    problem: Problem,
    params: Mapping[str, Any] | None = None,
    u0: torch.Tensor | None = None,
    *,
    t: float | None = None,
    atol: float = 1e-10,
    rtol: float = 1e-10,
    maxiter: int = 50,
    linear_solver: str = "auto",
    line_search: bool = True,
    strict: bool = False,
    return_info: bool = False,
    **linear_opts: Any,
) -> torch.Tensor | tuple[torch.Tensor, NewtonSolveInfo]:
    """Solve the steady problem ``R(u; p) = 0`` for a batch, differentiably in the parameters.

    Forward: Newton's method with backtracking line search (Armijo on ``||R||_2``), the linear
    systems solved by :func:`femoe.linalg.make_solver`. Backward: one adjoint solve with
    ``J(u*)^T`` reusing the factorisation of ``J(u*)``, then a vector-Jacobian product of ``R``
    with respect to the parameter tensors (implicit function theorem; iterations are never
    unrolled).

    Parameters
    ----------
    problem : Problem
        The weak-form problem.
    params : mapping, optional
        Parameter values (tensors with an optional leading batch, numbers, callables); tensors
        that require grad receive gradients.
    u0 : torch.Tensor, optional
        Initial guess ``(B, n)`` or ``(n,)``, default zeros. No gradient flows to it.
    t : float, optional
        Time passed to the forms (for steady solves of time-dependent coefficients).
    atol, rtol : float
        Converged when ``||R(u)||_2 <= max(atol, rtol ||R(u0)||_2)`` (all rows).
    maxiter : int
        Most Newton steps.
    linear_solver : str
        A name from :func:`femoe.linalg.available_solvers`.
    line_search : bool
        Backtrack (halving, down to 1e-4) until ``||R||`` decreases sufficiently.
    strict : bool
        Raise :class:`~femoe.errors.ConvergenceError` when a sample does not converge; otherwise
        warn with :class:`~femoe.errors.ConvergenceWarning` and flag it in the info record.
    return_info : bool
        Also return the :class:`NewtonSolveInfo`.
    **linear_opts
        Options of the linear solver (``rtol``, ``maxiter``, ``preconditioner`` ...).

    Returns
    -------
    u : torch.Tensor
        ``(B, n)`` solution (``(n,)`` when nothing had a batch).
    info : NewtonSolveInfo
        With ``return_info=True``.

    Raises
    ------
    NonFiniteError
        NaN/Inf in ``u0`` or the parameters (before any solve), or a residual that becomes
        non-finite.
    ShapeError
        ``u0`` of the wrong shape.
    ConvergenceError
        With ``strict=True``.
    """
    params = dict(params or {})
    check_params_finite(params)
    squeeze = u0 is None or u0.dim() == 1
    u_init = _initial_guess(problem, u0, params, "u0")
    names, tensors, static = split_params(params)
    info_out: list[NewtonSolveInfo] = []

    def res(u, p):
        return problem.residual(u, p, t=t).reshape(-1, problem.n)

    def res_jac(u, p):
        R, J = problem.residual_and_jacobian(u, p, t=t)
        return R.reshape(-1, problem.n), J

    what = f"problem {problem.name!r}"
    return _run(res, res_jac, names, static, info_out, u_init, tensors, squeeze, return_info, strict, what,
                newton_options(atol, rtol, maxiter, linear_solver, line_search, linear_opts,
                         probes=problem.null_space_probes(), what=what))


def nonlinear_step(
    problem: Problem,
    u_old: torch.Tensor,
    dt: float,
    params: Mapping[str, Any] | None = None,
    *,
    t_new: float = 0.0,
    u_guess: torch.Tensor | None = None,
    atol: float = 1e-10,
    rtol: float = 1e-10,
    maxiter: int = 50,
    linear_solver: str = "auto",
    line_search: bool = True,
    strict: bool = False,
    return_info: bool = False,
    **linear_opts: Any,
) -> torch.Tensor | tuple[torch.Tensor, NewtonSolveInfo]:
    """One theta-scheme step ``u_old -> u_new`` (:meth:`Problem.step_residual` ``= 0``),
    differentiable in ``u_old`` and the parameters.

    Same solver, options and backward as :func:`nonlinear_solve`; ``u_old`` is treated as one
    more parameter (its gradient is ``-lam^T dR/du_old``). The initial guess is ``u_guess``,
    default ``u_old``. ``u_old`` is ``(B, n)`` or ``(n,)``.
    """
    if not problem.is_time_dependent:
        raise ProblemError(f"problem {problem.name!r} is steady (no storage term); use nonlinear_solve")
    check_float_tensor("u_old", u_old)
    if u_old.shape[-1] != problem.n or u_old.dim() not in (1, 2):
        raise ShapeError(f"u_old must have shape (batch, {problem.n}) or ({problem.n},); got {tuple(u_old.shape)}")
    check_finite("u_old", u_old)
    params = dict(params or {})
    if _U_OLD in params:
        raise ShapeError(f"parameter name {_U_OLD!r} is reserved")
    check_params_finite(params)
    squeeze = u_old.dim() == 1 and (u_guess is None or u_guess.dim() == 1)
    u_init = _initial_guess(problem, u_old.detach() if u_guess is None else u_guess, params, "u_guess")
    names, tensors, static = split_params(params)
    names, tensors = [_U_OLD, *names], [u_old.reshape(-1, problem.n), *tensors]
    info_out: list[NewtonSolveInfo] = []

    def res(u, p):
        p = dict(p)
        old = p.pop(_U_OLD)
        return problem.step_residual(u, old.expand(u.shape[0], -1), dt, p, t_new=t_new).reshape(-1, problem.n)

    def res_jac(u, p):
        p = dict(p)
        old = p.pop(_U_OLD)
        R, J = problem.step_residual(u, old.expand(u.shape[0], -1), dt, p, t_new=t_new, jacobian=True)
        return R.reshape(-1, problem.n), J

    return _run(res, res_jac, names, static, info_out, u_init, tensors, squeeze, return_info, strict,
                f"problem {problem.name!r}, step to t = {t_new:g}",
                newton_options(atol, rtol, maxiter, linear_solver, line_search, linear_opts))


def solve_trajectory(
    problem: Problem,
    u0: torch.Tensor,
    dt: float,
    n_steps: int,
    params: Mapping[str, Any] | None = None,
    *,
    t0: float = 0.0,
    **options: Any,
) -> tuple[torch.Tensor, list[NewtonSolveInfo]]:
    """March ``n_steps`` theta-scheme steps with :func:`nonlinear_step`, step by step.

    Differentiable in ``u0`` and the parameters (each step's adjoint chains into the previous
    one). Returns levels ``0..n_steps`` as ``(B, n_steps + 1, n)`` (or ``(n_steps + 1, n)``)
    and the info record of every step. ``options`` go to :func:`nonlinear_step`.
    """
    if int(n_steps) < 1:
        raise ShapeError(f"n_steps must be a positive integer; got {n_steps}")
    levels, infos = [u0], []
    u = u0
    for k in range(1, int(n_steps) + 1):
        u, info = nonlinear_step(problem, u, dt, params, t_new=t0 + k * dt, return_info=True, **options)
        levels.append(u)
        infos.append(info)
    batch = max(x.shape[0] for x in levels if x.dim() == 2) if any(x.dim() == 2 for x in levels) else None
    if batch is not None:
        levels = [x.reshape(-1, problem.n).expand(batch, -1) for x in levels]
        return torch.stack(levels, dim=1), infos
    return torch.stack(levels, dim=0), infos
