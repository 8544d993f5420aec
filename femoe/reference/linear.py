"""One sparse linear solve for the reference side: a NumPy/SciPy front end of the solver registry."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from femoe.linalg import make_solver
from femoe.sparse import BatchedCSR, CSRPattern


def reference_linear_opts(opts: dict) -> dict:
    """The reference side's linear-solver options in the registry's terms: ``tol`` is the
    Krylov ``rtol``, and an iterative solve that misses its tolerance raises (``strict``)."""
    opts = dict(opts)
    if "tol" in opts:
        opts["rtol"] = opts.pop("tol")
    opts.setdefault("strict", True)
    return opts


def linear_solve(A: sp.spmatrix, b: np.ndarray, method: str = "auto", **opts) -> tuple[np.ndarray, int, str]:
    """Solve ``A x = b`` in float64; returns ``(x, iterations, solver used)``.

    ``method`` is any name of :func:`femoe.linalg.make_solver`, its aliases ``"amg-cg"`` and
    ``"amg-gmres"`` included; ``"auto"`` is the registry's choice without dense factorisations
    (SuperLU, or AMG-CG for symmetric systems above ``femoe.linalg._registry.AMG_MIN_N``
    unknowns), the choice of :func:`femoe.reference.solve`. ``iterations`` is 1 for direct
    solvers. Options as :func:`reference_linear_opts` reads them.
    """
    A = sp.csr_matrix(A, dtype=np.float64)
    A.sum_duplicates()
    A.sort_indices()
    M = BatchedCSR(CSRPattern.from_scipy(A), torch.as_tensor(A.data)[None])
    solver = make_solver(method, M, allow_dense=False, **reference_linear_opts(opts))
    x, info = solver.solve(torch.as_tensor(np.asarray(b, dtype=np.float64))[None])
    return x[0].numpy(), max(1, int(info.iterations[0])), solver.name
