"""Reference finite-element solves (ground truth for data and metrics).

Float64 front ends of the one Newton loop (:func:`femoe.layers.newton`): Newton with a
backtracking line search on the free rows' residual norm, the linear systems solved by the solver
registry (:func:`femoe.linalg.make_solver`: SuperLU, or AMG-preconditioned CG for large
symmetric positive definite systems). Steady problems use :func:`solve`; time-dependent ones
:func:`solve_transient`. These run on the CPU and are not differentiable; the differentiable
solves are in :mod:`femoe.linalg` and :mod:`femoe.layers`.
"""

from femoe.reference.newton import NewtonInfo, solve, solve_transient
from femoe.reference.linear import linear_solve, reference_linear_opts

__all__ = ["NewtonInfo", "solve", "solve_transient", "linear_solve", "reference_linear_opts"]
