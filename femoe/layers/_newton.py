"""Newton's method, once: the loop every Newton solve in femoe runs, and its differentiable front ends.

:func:`newton` is the one place that tests convergence, backtracks, records the residual history
and decides why a solve stopped. It runs batched on torch tensors over a :class:`NewtonSystem`
(two callables, :class:`NewtonOptions`). Its front ends:

- :func:`nonlinear_solve`, :func:`nonlinear_step`, :func:`solve_trajectory` and patch mode
  (:class:`NewtonRoot` through :func:`implicit_root`: differentiable, the adjoint reuses ``J(u*)``);
- :func:`femoe.reference.solve` and :func:`~femoe.reference.solve_transient`: float64, one
  sample, on the free DOFs, not differentiable (their defaults: :data:`REFERENCE_NEWTON`).

The linear systems are set up by :func:`femoe.linalg.make_solver`, whose ``"auto"`` choice is
the one registry's (:func:`femoe.linalg.choose_solver`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from femoe.errors import ConvergenceError, ConvergenceWarning, NonFiniteError, ProblemError, ShapeError
from femoe.layers._implicit import ImplicitProblem, implicit_root
from femoe.layers._state import U_OLD
from femoe.layers._validate import check_finite, check_float_tensor, check_params_finite, join_params, split_params
from femoe.linalg import check_nonsingular, make_solver
from femoe.problem import Problem
from femoe.sparse import BatchedCSR

log = logging.getLogger(__name__)


#: why a Newton solve stopped, per sample (``NewtonInfoBase.reason``)
REASONS = ("converged", "maxiter", "stalled line search", "non-finite")


@dataclass(frozen=True)
class NewtonInfoBase:
    """What every Newton info record says, per sample.

    Attributes
    ----------
    converged
        Whether ``||R(u)||_2 <= max(atol, rtol ||R(u_0)||_2)`` holds at the returned iterate.
    iterations
        Newton steps taken.
    residual_history
        ``||R||_2`` before the first step and after every step.
    reason
        Why the solve stopped, one of :data:`REASONS`: ``"converged"``; ``"maxiter"`` (out of
        steps); ``"stalled line search"`` (out of steps, and the last step's line search reached
        its floor ``min_step`` without a sufficient decrease); ``"non-finite"`` (a step made the
        residual NaN or Inf: the iterate before it is kept, and the front ends raise
        :class:`~femoe.errors.NonFiniteError`).

    :class:`NewtonSolveInfo` (batched: tensors, one entry per sample) and
    :class:`femoe.reference.NewtonInfo` (one sample: Python numbers) are the two kinds.
    """

    converged: Any
    iterations: Any
    residual_history: Any
    reason: Any

    def _failures(self) -> tuple[list[int], list[float], list[int], list[str]]:
        """``(samples, final norms, iterations, reasons)`` of the unconverged samples."""
        conv = torch.as_tensor(self.converged).reshape(-1)
        its = torch.as_tensor(self.iterations).reshape(-1)
        hist = torch.as_tensor(self.residual_history, dtype=torch.float64)
        final = hist.reshape(conv.numel(), -1)[:, -1]
        reasons = [self.reason] if isinstance(self.reason, str) else list(self.reason)
        bad = (~conv).nonzero().flatten().tolist()
        return bad, final[bad].tolist(), its[bad].tolist(), [reasons[b] for b in bad]


@dataclass(frozen=True)
class NewtonSolveInfo(NewtonInfoBase):
    """What one batched Newton solve did, per sample (:class:`NewtonInfoBase`'s fields as tensors).

    Attributes
    ----------
    converged : torch.Tensor
        ``(B,)`` bool: ``||R(u*)|| <= max(atol, rtol ||R(u_0)||)``.
    iterations : torch.Tensor
        ``(B,)`` int64 Newton steps taken.
    residual_history : torch.Tensor
        ``(B, steps + 1)`` ``||R||_2`` before the first step and after each step of the loop (a
        sample that has stopped repeats its last norm).
    reason : tuple of str
        One of :data:`REASONS` per sample.
    residual_norms : torch.Tensor
        ``(B,)`` final ``||R(u*)||_2`` (every row of the system solved).
    initial_residual_norms : torch.Tensor
        ``(B,)`` ``||R(u_0)||_2``.
    line_search_steps : torch.Tensor
        ``(B,)`` int64 step halvings in total.
    linear_solver : str
        Registry name of the linear solver of the last set-up (``"auto"`` resolved).
    linear_iterations : torch.Tensor
        ``(B, steps)`` int64 iterations of each step's linear solve (0 for direct solvers).
    linear_setups : int
        Linear-solver set-ups (factorisations, AMG hierarchies): the steps taken with
        ``max_jacobian_age = 1``, fewer when set-ups are reused.
    """

    residual_norms: torch.Tensor
    initial_residual_norms: torch.Tensor
    line_search_steps: torch.Tensor
    linear_solver: str
    linear_iterations: torch.Tensor
    linear_setups: int

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


@dataclass(frozen=True)
class NewtonOptions:
    """Newton's settings, one object for every Newton solve.

    ``atol``, ``rtol``: converged when ``||R||_2 <= max(atol, rtol ||R(u_0)||_2)`` over the rows
    of the system solved. ``line_search``: backtrack by halving until the Armijo condition
    ``||R(u + a du)|| <= (1 - 1e-4 a) ||R(u)||`` holds or ``a < min_step`` (that step is then
    taken). ``linear_solver``, ``linear_opts``: :func:`femoe.linalg.make_solver`'s name and
    options; ``allow_dense``: whether its ``"auto"`` may factorise small systems densely.
    ``max_jacobian_age``: how many steps one linear-solver set-up (a SuperLU factorisation, an
    AMG hierarchy) may serve. 1 (default) sets one up for every Jacobian: Newton's method. With
    ``k > 1`` (modified Newton) a set-up is kept while its steps are full steps that at least
    halve the residual of every active sample, for at most ``k`` steps, and the Jacobian is not
    assembled meanwhile; a step that contracts less, or backtracks, makes the next step assemble
    and set up a new one. ``probes``: ``(vectors (k, n), names)`` checked against the null space
    of the first Jacobian (a singular system raises ``SingularMatrixError`` instead of being
    solved); ``what`` names the solve in messages.

    The front ends' defaults differ in two fields only: the layers use these; the reference
    solve :data:`REFERENCE_NEWTON` (``min_step = 1e-3``, ``allow_dense = False``).
    """

    atol: float = 1e-10
    rtol: float = 1e-10
    maxiter: int = 50
    linear_solver: str = "auto"
    line_search: bool = True
    min_step: float = 1e-4
    linear_opts: Mapping[str, Any] = field(default_factory=dict)
    probes: Any = None
    what: str | None = None
    allow_dense: bool = True
    max_jacobian_age: int = 1

    def __post_init__(self):
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ProblemError(f"atol and rtol must be >= 0; got {self.atol}, {self.rtol}")
        if int(self.maxiter) < 0:
            raise ProblemError(f"maxiter must be >= 0; got {self.maxiter}")
        if not 0 < self.min_step <= 1:
            raise ProblemError(f"min_step must be in (0, 1]; got {self.min_step}")
        if int(self.max_jacobian_age) < 1:
            raise ProblemError(f"max_jacobian_age must be >= 1; got {self.max_jacobian_age}")


#: the reference solve's defaults: the line-search floor 1e-3 and SuperLU at every size (no dense
#: factorisation in ``"auto"``), as the reference Newton always had; its references are pinned
#: by tests/test_reference_pins.py
REFERENCE_NEWTON = {"min_step": 1e-3, "allow_dense": False}


def newton_options(atol, rtol, maxiter, linear_solver, line_search, linear_opts, probes=None,
                   what=None, **more) -> NewtonOptions:
    """:class:`NewtonOptions` from the keyword arguments of the public solves and layers;
    ``more`` sets the other fields (``min_step``, ``allow_dense``, ``max_jacobian_age``)."""
    return NewtonOptions(float(atol), float(rtol), int(maxiter), linear_solver, bool(line_search),
                         linear_opts=dict(linear_opts), probes=probes, what=what, **more)


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


def _line_search(system: NewtonSystem, p: dict, u, du, norm, active):
    """Backtrack from the full step ``du``. Returns ``(trial, R(trial), ||R(trial)||, halvings,
    alpha, stalled)``, ``stalled`` where an active sample took the floor step without a
    sufficient decrease."""
    o = system.opts
    alpha = torch.ones(u.shape[0], dtype=u.dtype, device=u.device)
    halvings = torch.zeros(u.shape[0], dtype=torch.int64, device=u.device)
    while True:
        trial = u + alpha[:, None] * du
        R = system.residual(trial, p)
        new_norm = torch.linalg.vector_norm(R, dim=1)
        ok = ~active | (new_norm <= (1 - 1e-4 * alpha) * norm)
        if not o.line_search:
            ok = torch.ones_like(ok)
        small = alpha < o.min_step
        if bool((ok | small).all()):
            return trial, R, new_norm, halvings, alpha, active & ~ok
        step = ~(ok | small)
        alpha = torch.where(step, alpha / 2, alpha)
        halvings += step.to(torch.int64)


def newton(system: NewtonSystem, u: torch.Tensor, p: dict, *,
           jacobian_at_root: bool = True) -> tuple[torch.Tensor, BatchedCSR | None, NewtonSolveInfo]:
    """Newton's method with backtracking on ``R(x; p) = 0`` for a batch, from ``u`` ``(B, n)``.

    Every sample stops on its own (converged, out of steps, or non-finite; see
    :class:`NewtonInfoBase`); the others go on. Returns ``(x, J, info)``: the last iterates, the
    Jacobian at them (assembled at the end if the last step left it stale; ``None`` when
    ``jacobian_at_root`` is False) and the :class:`NewtonSolveInfo`. Nothing here raises for an
    unconverged or non-finite sample: that policy is the front ends' (:func:`check_newton`).
    """
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
    nonfinite = torch.zeros(batch, dtype=torch.bool, device=u.device)
    stalled = torch.zeros(batch, dtype=torch.bool, device=u.device)
    history, linear_its = [norm], []
    solver, age, setups, solver_name = None, 0, 0, o.linear_solver
    for _ in range(o.maxiter):
        active = (norm > target) & ~nonfinite
        if not bool(active.any()):
            break
        if solver is None:
            if J is None:
                R, J = system.residual_and_jacobian(u, p)
            solver = make_solver(o.linear_solver, J, allow_dense=o.allow_dense, **o.linear_opts)
            solver_name, age, setups = solver.name, 0, setups + 1
        du, lin = solver.solve(-R)
        linear_its.append(lin.iterations)
        age += 1
        trial, R_new, new_norm, steps, alpha, stalled = _line_search(system, p, u, du * active[:, None], norm, active)
        halvings += steps
        bad = ~torch.isfinite(new_norm)
        if bool(bad.any()):  # keep the last finite iterate of a sample that blew up
            nonfinite |= bad & active
            trial = torch.where(bad[:, None], u, trial)
            R_new = torch.where(bad[:, None], R, R_new)
            new_norm = torch.where(bad, norm, new_norm)
        contracted = bool((~active | ((new_norm <= 0.5 * norm) & (alpha == 1))).all())
        u, R, norm = trial, R_new, new_norm
        iterations += (active & ~bad).to(torch.int64)
        history.append(norm)
        J = None  # J belongs to an earlier iterate now
        if age >= o.max_jacobian_age or not contracted:
            solver = None
    if jacobian_at_root and J is None:
        R, J = system.residual_and_jacobian(u, p)
    converged = norm <= target
    reason = tuple("converged" if c else "non-finite" if nf else "stalled line search" if s else "maxiter"
                   for c, nf, s in zip(converged.tolist(), nonfinite.tolist(), stalled.tolist()))
    lin = (torch.stack(linear_its, 1) if linear_its
           else torch.zeros(batch, 0, dtype=torch.int64, device=u.device))
    info = NewtonSolveInfo(converged, iterations, torch.stack(history, 1), reason, norm, initial, halvings,
                           solver_name, lin, setups)
    return u, J, info


def raise_nonfinite(info: NewtonInfoBase, what: str) -> None:
    """Raise :class:`NonFiniteError` when a sample stopped on a non-finite residual (every front
    end does, whatever ``strict`` says: no iterate of such a solve is worth returning)."""
    reasons = [info.reason] if isinstance(info.reason, str) else list(info.reason)
    if "non-finite" not in reasons:
        return
    bad = reasons.index("non-finite")
    its = torch.as_tensor(info.iterations).reshape(-1)
    raise NonFiniteError(
        f"{what}: the residual became non-finite at Newton step {int(its[bad]) + 1} for sample {bad}; "
        "improve the initial guess u0 or reduce the time step"
    )


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
        x, self._J, info = newton(self.system, self.x_init, self._p(inputs))
        raise_nonfinite(info, self.system.opts.what or "Newton")
        self.system.info.append(info)
        return x

    def optimality(self, x, inputs):
        return self.system.residual(x, self._p(inputs))

    def adjoint(self, x, inputs, g, needs):
        o = self.system.opts
        solver = make_solver(o.linear_solver, self._J, allow_dense=o.allow_dense, **o.linear_opts)
        lam, _ = solver.solve(g, transpose=True)
        return lam


def check_newton(info: NewtonInfoBase, strict: bool, what: str) -> None:
    """The unconverged-solve policy of every Newton front end: a :class:`ConvergenceWarning`
    naming the samples and why they stopped, or with ``strict`` a :class:`ConvergenceError`
    (a non-finite residual raises :class:`NonFiniteError` in any case)."""
    raise_nonfinite(info, what)
    failed, norms, its, reasons = info._failures()
    if not failed:
        return
    msg = (f"{what}: Newton did not converge for samples {failed} ({', '.join(sorted(set(reasons)))}; residual "
           f"norms {norms}, iterations {its}); raise maxiter, improve u0, or loosen atol/rtol")
    if strict:
        raise ConvergenceError(msg, info=info)
    warnings.warn(msg, ConvergenceWarning, stacklevel=3)


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
    max_jacobian_age: int = 1,
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
    max_jacobian_age : int
        How many Newton steps one linear-solver set-up (factorisation, AMG hierarchy) may serve
        (:class:`NewtonOptions`): 1, Newton's method; ``k > 1``, modified Newton, a set-up kept
        while its full steps at least halve the residual. The adjoint always uses ``J(u*)``.
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
                               probes=problem.null_space_probes(), what=what, max_jacobian_age=max_jacobian_age))


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
    max_jacobian_age: int = 1,
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
    check_params_finite(params)
    squeeze = u_old.dim() == 1 and (u_guess is None or u_guess.dim() == 1)
    u_init = _initial_guess(problem, u_old.detach() if u_guess is None else u_guess, params, "u_guess")
    names, tensors, static = split_params(params)
    names, tensors = [U_OLD, *names], [u_old.reshape(-1, problem.n), *tensors]
    info_out: list[NewtonSolveInfo] = []

    def res(u, p):
        p = dict(p)
        old = p.pop(U_OLD)
        return problem.step_residual(u, old.expand(u.shape[0], -1), dt, p, t_new=t_new).reshape(-1, problem.n)

    def res_jac(u, p):
        p = dict(p)
        old = p.pop(U_OLD)
        R, J = problem.step_residual(u, old.expand(u.shape[0], -1), dt, p, t_new=t_new, jacobian=True)
        return R.reshape(-1, problem.n), J

    return _run(res, res_jac, names, static, info_out, u_init, tensors, squeeze, return_info, strict,
                f"problem {problem.name!r}, step to t = {t_new:g}",
                newton_options(atol, rtol, maxiter, linear_solver, line_search, linear_opts,
                               max_jacobian_age=max_jacobian_age))


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
