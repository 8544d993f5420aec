"""Reference finite-element solves (ground truth for data and metrics).

Newton with a backtracking line search on the residual norm, and sparse linear solves with
SciPy's SuperLU (factorisation reused inside a step when the Jacobian is constant) or
pyamg-preconditioned CG for large symmetric positive definite systems. Steady problems use
:func:`solve`; time-dependent ones :func:`solve_transient`. These run in float64 on the CPU
and are not differentiable; the differentiable solves are in :mod:`femoe.linalg` and
:mod:`femoe.layers`.
"""

from femoe.reference.newton import NewtonInfo, solve, solve_transient
from femoe.reference.linear import LINEAR_SOLVERS, linear_solve

__all__ = ["NewtonInfo", "solve", "solve_transient", "linear_solve", "LINEAR_SOLVERS"]
