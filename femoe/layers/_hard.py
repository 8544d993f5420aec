"""PI-HC: the single-expert hard-constraint layer in basis mode (Chalapathi et al., ICLR 2024)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from femoe.errors import ProblemError, ShapeError
from femoe.layers._lm import Backward, LeastSquaresInfo, LMOptions, Unconverged, least_squares_solve
from femoe.layers._residuals import INITIAL, SteadyResidual, TrajectoryResidual, basis_field
from femoe.layers._validate import (check_finite, check_float_tensor, check_initial, check_params_finite,
                                    exclude_unconverged, parse_unconverged, report_unconverged)
from femoe.problem import Problem

log = logging.getLogger(__name__)


class HardConstraint(nn.Module):
    """Project a network's basis onto the discrete PDE: ``u = B w*`` with
    ``w* = argmin_w 1/2 ||r(B w; p)||^2 + rho/2 ||w||^2``.

    Steady problems: ``r`` are the rows ``rows`` of ``R(u; p)`` (Dirichlet rows ``u_i - g_i``
    included by default), ``B`` has shape ``(batch, n_L, N)``. Time-dependent problems: ``B``
    holds levels ``0..T``, shape ``(batch, T + 1, n_L, N)``; ``r`` are the theta-scheme rows of
    steps ``1..T`` given level 0 (:meth:`Problem.trajectory_residual`) plus initial-condition
    rows ``c (U_0 - u0)`` (see :class:`~femoe.layers.TrajectoryResidual`).

    Forward: Levenberg-Marquardt on the ``N x N`` normal equations, batched over samples.
    Backward: the implicit function theorem at ``grad_w = 0`` with the exact Hessian (or
    ``backward="unrolled"`` as a reference). Everything fixed (row and DOF indices, the residual
    model) is set up here, once.

    Parameters
    ----------
    problem : Problem
        The weak-form problem.
    rows : index, optional
        Enforced residual rows (steady: into ``n``; trajectories: into the flattened ``T n``).
        Default all.
    dofs : index, optional
        DOFs the basis lives on (``n_L`` of them; default all ``n``).
    dt, t0 : float
        Time step and initial time (time-dependent problems; ``dt`` required there).
    ic_rows, ic_weight
        Initial-condition rows and weight (time-dependent problems), see
        :class:`~femoe.layers.TrajectoryResidual`.
    t : float, optional
        Time passed to the forms of a steady solve.
    rho : float
        Ridge weight (1e-4 as in the paper).
    tol, atol : float
        Converged when ``||grad_w f|| <= max(atol, tol ||grad_w f(0)||, floor)``, ``floor`` the
        round-off level of the gradient at the sample's own scale (see
        :class:`~femoe.layers.LeastSquaresInfo`), so the test is the optimality condition the
        implicit backward needs and is reachable in any precision. The paper used 1e-4; the
        default (``None``) is 1e-10 in float64, which makes the implicit gradient accurate, and
        1e-5 in float32.
    maxiter : int
        Most LM iterations (100 as in the paper).
    patience : int
        A sample that improves neither ``f`` nor ``||grad_w f||`` for this many iterations
        stops as stalled (not converged), so it does not hold the batch to ``maxiter``.
    damping : float
        Initial LM damping relative to ``max diag(J_w^T J_w)``.
    hessian : ``"exact"`` or ``"gauss_newton"``
        Hessian of the implicit backward (see :class:`~femoe.layers.Hessian`).
    hvp_chunk : int, optional
        Hessian-vector products per batched backward pass (bounds memory for large ``N``).
    backward : ``"implicit"`` or ``"unrolled"``
        See :class:`~femoe.layers.Backward`.
    row_scale : ``"mass"``, None or array
        Weights of the PDE rows in the objective. ``"mass"`` (default) divides row ``i`` by the
        mass-matrix diagonal ``M_ii``, making rows pointwise residuals: without it weak-form rows
        scale like ``h^d`` and the ridge ``rho`` would outweigh them on fine meshes.
    unconverged : ``"flag"``, ``"exclude"`` or ``"raise"``
        Policy for samples that did not converge (see :class:`~femoe.layers.Unconverged`):
        ``"flag"`` (default) uses them, flags them in ``info.converged`` and issues a
        :class:`~femoe.errors.ConvergenceWarning` (once per layer); ``"exclude"`` uses their value
        but gives them no gradient (and warns); ``"raise"`` raises
        :class:`~femoe.errors.ConvergenceError`.
    strict : bool
        Same as ``unconverged="raise"``.
    """

    def __init__(self, problem: Problem, *, rows: Any = None, dofs: Any = None, dt: float | None = None,
                 t0: float = 0.0, ic_rows: Any = None, ic_weight: str | float | torch.Tensor = "paper",
                 t: float | None = None, rho: float = 1e-4, tol: float | None = None, atol: float = 0.0,
                 maxiter: int = 100, damping: float = 1e-6, hessian: str = "exact", hvp_chunk: int | None = None,
                 backward: str = "implicit", strict: bool = False, row_scale: Any = "mass",
                 unconverged: str = "flag", patience: int = 20):
        super().__init__()
        if not isinstance(problem, Problem):
            raise ProblemError(f"problem must be a femoe.Problem; got {type(problem).__name__}")
        self.problem = problem
        self.time_dependent = problem.is_time_dependent
        if self.time_dependent:
            if dt is None:
                raise ProblemError(f"problem {problem.name!r} is time-dependent: give the time step dt")
            self.model = TrajectoryResidual(problem, dt, t0, rows=rows, ic_rows=ic_rows, dofs=dofs,
                                            ic_weight=ic_weight, row_scale=row_scale)
        else:
            if dt is not None or ic_rows is not None:
                raise ProblemError(f"problem {problem.name!r} is steady: dt and ic_rows do not apply")
            self.model = SteadyResidual(problem, rows=rows, dofs=dofs, t=t, row_scale=row_scale)
        self.options = LMOptions(rho=rho, tol=tol, atol=atol, maxiter=maxiter, damping=damping, hessian=hessian,
                                 hvp_chunk=hvp_chunk, patience=patience)
        self.backward_mode = Backward.parse(backward, "backward")
        if self.options.hessian.value == "exact" and self.backward_mode.value == "implicit":
            self.model.prepare_curvature()
        self.unconverged = parse_unconverged(unconverged, strict)
        self.strict = self.unconverged is Unconverged.RAISE
        self._warned = False
        self.last_info: LeastSquaresInfo | None = None

    @property
    def n_local(self) -> int:
        """Number of DOFs the basis lives on."""
        return self.model.n_local

    def extra_repr(self) -> str:
        o = self.options
        return (f"problem={self.problem.name!r}, n_local={self.n_local}, time_dependent={self.time_dependent}, "
                f"rho={o.rho}, tol={o.tol}, maxiter={o.maxiter}, hessian={o.hessian.value}, "
                f"backward={self.backward_mode.value}")

    def _check_basis(self, B: Any) -> tuple[torch.Tensor, bool]:
        check_float_tensor("B", B)
        nl = self.n_local
        if self.time_dependent:
            expected = f"(batch, T + 1, {nl}, N) or (T + 1, {nl}, N)"
            ok = B.dim() in (3, 4) and B.shape[-2] == nl and B.shape[-3] >= 2 and B.shape[-1] >= 1
            squeeze = B.dim() == 3
        else:
            expected = f"(batch, {nl}, N) or ({nl}, N)"
            ok = B.dim() in (2, 3) and B.shape[-2] == nl and B.shape[-1] >= 1
            squeeze = B.dim() == 2
        if not ok:
            raise ShapeError(f"B must have shape {expected}; received {tuple(B.shape)}")
        # the solve reads B at every iteration (B w, J_w = M B, reshapes): a strided basis (a
        # permuted network output) would be copied at each read, so it is copied once here
        B = B.contiguous()
        check_finite("B", B)
        return (B.unsqueeze(0) if squeeze else B), squeeze

    def forward(self, B: torch.Tensor, params: Mapping[str, Any] | None = None,
                u0: torch.Tensor | None = None) -> tuple[torch.Tensor, LeastSquaresInfo]:
        """Constrain the basis ``B``.

        Parameters
        ----------
        B : torch.Tensor
            Basis fields, ``(batch, n_L, N)`` (steady) or ``(batch, T + 1, n_L, N)``
            (time-dependent); the batch axis may be left out.
        params : mapping, optional
            Problem parameters (batch 1 or the batch of ``B``).
        u0 : torch.Tensor, optional
            Initial condition ``(batch, n)`` or ``(n,)`` (time-dependent problems only, required).

        Returns
        -------
        u : torch.Tensor
            ``B w*``: ``(batch, n_L)`` or ``(batch, T + 1, n_L)`` (no batch axis if ``B`` had none).
        info : LeastSquaresInfo
            Iterations, per-sample convergence flags, residual and gradient norms.

        Raises
        ------
        ShapeError
            Wrong shape or dtype of ``B``, ``u0`` or the parameters (expected vs received).
        NonFiniteError
            NaN or Inf in ``B``, ``u0`` or a parameter tensor (checked before any solve).
        ConvergenceError
            With ``unconverged="raise"`` (or ``strict=True``) when a sample does not converge.
        """
        B3, squeeze = self._check_basis(B)
        params = dict(params or {})
        check_params_finite(params)
        if self.time_dependent:
            if u0 is None:
                raise ProblemError(f"problem {self.problem.name!r} is time-dependent: give the initial condition u0")
            u0 = check_initial(u0, self.problem.n, B3.shape[0], B3.dtype)
            params[INITIAL] = u0
            self.model.check_levels(B3.shape[1] - 1)
        elif u0 is not None:
            raise ProblemError(f"problem {self.problem.name!r} is steady: u0 does not apply")
        w, info = least_squares_solve(self.model, B3, params, self.options, self.backward_mode)
        self.last_info = info
        self._report(info)
        u = basis_field(B3, w)
        if self.unconverged is Unconverged.EXCLUDE:
            u = exclude_unconverged(u, info.converged)
        return (u[0] if squeeze else u), info

    def _report(self, info: LeastSquaresInfo) -> None:
        if info.all_converged:
            return
        bad = ~info.converged
        failed = bad.nonzero().flatten().tolist()
        msg = (f"HardConstraint on {self.problem.name!r}: Levenberg-Marquardt did not converge for samples "
               f"{failed} (stalled: {info.stalled[bad].tolist()}; iterations {info.iterations[bad].tolist()} of "
               f"{self.options.maxiter}; relative gradient norms {info.relative_gradient[bad].tolist()}; estimated "
               f"relative weight error {info.weight_error[bad].tolist()})")
        report_unconverged(self, msg, info)
