"""Name -> solver class registry and the ``"auto"`` choice."""

from __future__ import annotations

import logging
from typing import Any

from femoe.errors import ConfigError, SingularMatrixError
from femoe.linalg._base import LinearSolver, check_matrix, symmetric_mask
from femoe.linalg._block import BlockBidiagonalSolver
from femoe.linalg._cg import CGSolver
from femoe.linalg._dense_cholesky import DenseCholeskySolver
from femoe.linalg._dense_lu import DenseLUSolver
from femoe.linalg._gmres import GMRESSolver
from femoe.linalg._minres import MINRESSolver
from femoe.linalg._superlu import SuperLUSolver
from femoe.sparse import BatchedCSR

logger = logging.getLogger(__name__)

SOLVERS: dict[str, type[LinearSolver]] = {
    cls.name: cls
    for cls in (DenseCholeskySolver, DenseLUSolver, SuperLUSolver, BlockBidiagonalSolver, CGSolver, MINRESSolver,
                GMRESSolver)
}

#: Largest system solved densely by ``"auto"``.
DENSE_MAX_N = 2000
#: Memory the dense copies (``B n^2`` entries) may take in ``"auto"``, bytes.
DENSE_MEMORY_BUDGET = 2**30
#: Above this size ``"auto"`` prefers AMG-preconditioned CG to SuperLU for symmetric systems
#: (the reference solve's threshold too: one choice for every solve).
AMG_MIN_N = 200_000

#: Names that stand for a registered solver with preset options (the reference solve's names).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "amg-cg": ("cg", {"preconditioner": "amg"}),
    "amg-gmres": ("gmres", {"preconditioner": "amg"}),
}


def available_solvers() -> list[str]:
    """Names accepted by :func:`make_solver` (``"auto"`` included; :data:`ALIASES` too)."""
    return ["auto", *sorted(SOLVERS)]


def choose_solver(A: BatchedCSR, *, allow_dense: bool = True) -> tuple[str, dict[str, Any]]:
    """The solver name and options ``"auto"`` uses for ``A``: the one place femoe picks a solver.

    Dense Cholesky (symmetric) or LU when ``allow_dense``, ``n <= DENSE_MAX_N`` and the
    ``B n^2`` dense copies fit ``DENSE_MEMORY_BUDGET``; off the CPU, Jacobi-CG (symmetric) or Jacobi-GMRES, since SciPy
    cannot run there; on the CPU, AMG-CG for symmetric systems above ``AMG_MIN_N`` unknowns and
    SuperLU otherwise.
    """
    check_matrix(A)
    n = A.pattern.shape[0]
    symmetric = bool(symmetric_mask(A).all())
    dense_bytes = A.batch_size * n * n * A.values.element_size()
    if allow_dense and n <= DENSE_MAX_N and dense_bytes <= DENSE_MEMORY_BUDGET:
        return ("dense_cholesky" if symmetric else "dense_lu"), {}
    if A.device.type != "cpu":
        return ("cg" if symmetric else "gmres"), {"preconditioner": "jacobi"}
    if symmetric and n > AMG_MIN_N:
        return "cg", {"preconditioner": "amg"}
    return "superlu", {}


def make_solver(name: str, A: BatchedCSR, *, allow_dense: bool = True, **opts: Any) -> LinearSolver:
    """Set up the solver registered under ``name`` for ``A`` (factorise, build preconditioner).

    Parameters
    ----------
    name : str
        One of :func:`available_solvers` or :data:`ALIASES`. ``"auto"`` picks with
        :func:`choose_solver` and falls back from dense Cholesky to dense LU when ``A`` is
        symmetric but not positive definite.
    A : BatchedCSR
        Square matrices, batch ``B`` or 1, float32 or float64.
    allow_dense : bool
        Passed to :func:`choose_solver` by ``"auto"`` (False: sparse solvers at every size).
    **opts
        Solver options (``strict`` for all; ``rtol``, ``atol``, ``maxiter``, ``preconditioner``
        for the Krylov solvers; ``restart`` for GMRES). With ``"auto"`` an option is passed on
        only if the chosen solver takes it, but it must be known to at least one solver.

    Returns
    -------
    LinearSolver
        Call ``solver.solve(b)`` or ``solver.solve(b, transpose=True)`` as often as needed.

    Raises
    ------
    ConfigError
        Unknown solver name or option, listing the valid ones.
    """
    if name == "auto":
        known = set().union(*(cls.options for cls in SOLVERS.values()))
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ConfigError(f"Unknown solver option(s) {unknown} for 'auto'. Pick from {sorted(known)}")
        chosen, defaults = choose_solver(A, allow_dense=allow_dense)
        logger.debug("auto solver for %r: %s %s", A, chosen, defaults)
        cls = SOLVERS[chosen]
        kwargs = {**defaults, **{k: v for k, v in opts.items() if k in cls.options}}
        if chosen == "dense_cholesky":
            try:
                return cls(A, **kwargs)
            except SingularMatrixError:
                logger.debug("auto: A is not positive definite; falling back to dense_lu")
                return DenseLUSolver(A, **{k: v for k, v in opts.items() if k in DenseLUSolver.options})
        return cls(A, **kwargs)
    if isinstance(name, str) and name in ALIASES:
        name, preset = ALIASES[name]
        opts = {**preset, **opts}
    if not isinstance(name, str) or name not in SOLVERS:
        raise ConfigError(f"Unknown linear solver {name!r}. Pick one of {available_solvers()} or an alias "
                          f"{sorted(ALIASES)}")
    cls = SOLVERS[name]
    unknown = sorted(set(opts) - set(cls.options))
    if unknown:
        raise ConfigError(f"Unknown option(s) {unknown} for solver {name!r}. Pick from {sorted(cls.options)}")
    return cls(A, **opts)
