"""Singular systems detected before they are solved: a probe vector in the null space.

A pure Neumann problem, a Stokes problem whose pressure no condition fixes, or an expert's
patch that nothing anchors has the constant of a field (or of a vector component) in the null
space of its Jacobian. Direct solvers then return *some* solution (SuperLU picks one through
round-off, so two runs of the same problem can differ by a constant) and Krylov solvers another;
neither says so. ``J v = 0`` is checked row by row against the round-off of the product,

    |(J v)_i| <= c eps (sum_j |J_ij| |v_j| + max|J| max|v|)     for every row i   (c = 1000),

which holds for an exact null vector and fails for any row that couples ``v`` to a Dirichlet
row, an interface, a Robin or a reaction term: there are no false alarms, only the constants
that are not probed (rotations of a free elastic body, say) go undetected.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from femoe.errors import SingularMatrixError
from femoe.sparse import BatchedCSR

ROUNDOFF_FACTOR = 1000.0


def null_probe_hits(A, probes: np.ndarray) -> list[tuple[int, int]]:
    """``(batch element, probe)`` pairs with ``A v = 0`` to round-off.

    Parameters
    ----------
    A : BatchedCSR or scipy.sparse matrix
        Square matrices (a batch, or one SciPy matrix as batch element 0).
    probes : ndarray ``(k, n)``
        Candidate null vectors (e.g. indicator vectors of a field's DOFs).
    """
    probes = np.atleast_2d(np.asarray(probes, dtype=np.float64))
    if probes.size == 0:
        return []
    if isinstance(A, BatchedCSR):
        pat = A.pattern
        vals = A.values.detach().to("cpu", torch.float64).numpy()
        eps = float(torch.finfo(A.values.dtype).eps)
        mats = [sp.csr_matrix((v, pat.indices, pat.indptr), shape=pat.shape) for v in vals]
    else:
        mats = [sp.csr_matrix(A)]
        eps = float(np.finfo(np.asarray(mats[0].data).dtype).eps) if mats[0].nnz else float(np.finfo(float).eps)
    hits = []
    V, absV = probes.T, np.abs(probes.T)
    for b, M in enumerate(mats):
        if M.shape[1] != probes.shape[1]:
            raise ValueError(f"probes have {probes.shape[1]} entries, the matrix {M.shape[1]} columns")
        Av = np.abs(M @ V)
        # per-row round-off of the product, floored by the matrix's own round-off level (rows
        # whose entries are all quadrature round-off, e.g. div(phi_i) of an interior bubble)
        scale = float(abs(M).max()) if M.nnz else 0.0
        bound = ROUNDOFF_FACTOR * eps * (abs(M) @ absV + scale * absV.max(axis=0))
        for k in np.nonzero((Av <= bound).all(axis=0) & (absV.sum(axis=0) > 0))[0]:
            hits.append((b, int(k)))
    return hits


def check_nonsingular(A, probes: np.ndarray, names: Sequence[str], what: str) -> None:
    """Raise :class:`SingularMatrixError` when a probe lies in the null space of ``A``.

    ``names[k]`` says what probe ``k`` is (``"the constant of field 'u'"``)."""
    hits = null_probe_hits(A, probes)
    if not hits:
        return
    b, k = hits[0]
    raise SingularMatrixError(
        f"{what}: the system is singular: {names[k]} is in the null space of the Jacobian (batch element {b}), "
        "so no boundary condition fixes its level (a pure Neumann problem, a pressure that no condition fixes, "
        "or a patch that nothing anchors). Add a Dirichlet condition on that field (pinning one DOF is enough), "
        "a Robin or reaction term, or a mean-value constraint"
    )
