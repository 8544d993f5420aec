"""Linear solvers on :class:`femoe.sparse.BatchedCSR` matrices and a differentiable sparse solve.

Solvers come from a name -> class registry (one module each): ``"dense_cholesky"``,
``"dense_lu"``, ``"superlu"``, ``"block_bidiagonal"`` (a trajectory's Jacobian in its levels, by
block substitution), ``"cg"``, ``"minres"``, ``"gmres"``, plus ``"auto"``, which picks
by size, symmetry and device (:func:`choose_solver`, the one choice every solve in femoe makes,
the reference solve's included), and the aliases ``"amg-cg"`` and ``"amg-gmres"``. Every solver is set up once and then solves many times, with
``A`` or ``A^T``::

    solver = make_solver("cg", A, preconditioner="amg")
    x, info = solver.solve(b)
    lam, _ = solver.solve(g, transpose=True)

:func:`sparse_solve` wraps this in an autograd Function whose backward is one adjoint solve with
the forward's solver; :func:`solve_with` does the same with a solver set up once on a constant
matrix (differentiable in ``b`` only), so the factorisation is not repeated per call.
"""

from femoe.linalg._base import LinearSolver, SolveInfo
from femoe.linalg._autograd import solve_with, sparse_solve
from femoe.linalg._nullspace import check_nonsingular, null_probe_hits
from femoe.linalg._preconditioners import PRECONDITIONERS
from femoe.linalg._registry import ALIASES, SOLVERS, available_solvers, choose_solver, make_solver

__all__ = [
    "ALIASES",
    "check_nonsingular",
    "null_probe_hits",
    "LinearSolver",
    "PRECONDITIONERS",
    "SOLVERS",
    "SolveInfo",
    "available_solvers",
    "choose_solver",
    "make_solver",
    "solve_with",
    "sparse_solve",
]
