"""Sparse linear solves for the reference solver: SuperLU and AMG-preconditioned CG."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from femoe.errors import ConfigError, ConvergenceError, SingularMatrixError

log = logging.getLogger(__name__)

#: above this many unknowns "auto" uses AMG-CG for symmetric matrices
AMG_THRESHOLD = 200_000


def _is_symmetric(A: sp.csr_matrix, tol: float = 1e-12) -> bool:
    d = abs(A - A.T)
    return d.nnz == 0 or d.max() <= tol * max(abs(A).max(), 1e-300)


def _superlu(A: sp.csr_matrix, b: np.ndarray, symmetric: bool, **_) -> tuple[np.ndarray, int]:
    try:
        if symmetric:
            lu = spla.splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                           options={"SymmetricMode": True})
        else:
            lu = spla.splu(A.tocsc(), permc_spec="COLAMD")
    except RuntimeError as exc:
        raise SingularMatrixError(
            f"SuperLU could not factorise the {A.shape[0]}x{A.shape[0]} system ({exc}); the problem is "
            "singular: check that Dirichlet data fixes the solution (a pure Neumann problem needs a "
            "constraint) and that coefficients are positive"
        ) from exc
    x = lu.solve(b)
    if not np.all(np.isfinite(x)):
        raise SingularMatrixError("SuperLU returned non-finite values: the matrix is numerically singular")
    return x, 1


def _amg_cg(A: sp.csr_matrix, b: np.ndarray, symmetric: bool, tol: float = 1e-10, maxiter: int = 500, **_):
    import pyamg

    if not symmetric:
        raise ConfigError("amg-cg needs a symmetric matrix; use linear_solver='superlu' or 'amg-gmres'")
    ml = pyamg.smoothed_aggregation_solver(A)
    res: list[float] = []
    x = ml.solve(b, tol=tol, maxiter=maxiter, accel="cg", residuals=res)
    rel = res[-1] / max(res[0], 1e-300) if res else 0.0
    if rel > tol * 10:
        raise ConvergenceError(
            f"AMG-CG stopped after {len(res) - 1} iterations at relative residual {rel:.2e} > {tol:.1e}; "
            "the matrix may not be positive definite (use linear_solver='superlu')",
            info={"iterations": len(res) - 1, "residuals": res},
        )
    return x, len(res) - 1


def _amg_gmres(A, b, symmetric, tol: float = 1e-10, maxiter: int = 500, **_):
    import pyamg

    ml = pyamg.smoothed_aggregation_solver(A, symmetry="symmetric" if symmetric else "nonsymmetric")
    res: list[float] = []
    x = ml.solve(b, tol=tol, maxiter=maxiter, accel="gmres", residuals=res)
    rel = res[-1] / max(res[0], 1e-300) if res else 0.0
    if rel > tol * 10:
        raise ConvergenceError(f"AMG-GMRES stopped at relative residual {rel:.2e} > {tol:.1e}",
                               info={"iterations": len(res) - 1, "residuals": res})
    return x, len(res) - 1


LINEAR_SOLVERS = {"superlu": _superlu, "amg-cg": _amg_cg, "amg-gmres": _amg_gmres}


def linear_solve(A: sp.spmatrix, b: np.ndarray, method: str = "auto", *, symmetric: bool | None = None,
                 **opts) -> tuple[np.ndarray, int, str]:
    """Solve ``A x = b``; returns ``(x, iterations, method used)``.

    ``method`` is ``"auto"`` or one of :data:`LINEAR_SOLVERS`. ``"auto"`` takes SuperLU up to
    :data:`AMG_THRESHOLD` unknowns and AMG-CG above it for symmetric matrices.
    """
    A = sp.csr_matrix(A)
    if symmetric is None:
        symmetric = _is_symmetric(A)
    if method == "auto":
        method = "amg-cg" if (symmetric and A.shape[0] > AMG_THRESHOLD) else "superlu"
    if method not in LINEAR_SOLVERS:
        raise ConfigError(f"unknown linear solver {method!r}; choose one of {['auto', *LINEAR_SOLVERS]}")
    x, it = LINEAR_SOLVERS[method](A, np.asarray(b, dtype=float), symmetric, **opts)
    return x, it, method
