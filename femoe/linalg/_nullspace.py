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
from femoe.sparse import BatchedCSR, CSRPattern

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
    if not isinstance(A, BatchedCSR):
        M = sp.csr_matrix(A)
        eps = float(np.finfo(np.asarray(M.data).dtype).eps) if M.nnz else float(np.finfo(float).eps)
        A = BatchedCSR(CSRPattern(M.indptr.astype(np.int64), M.indices.astype(np.int64), M.shape),
                       torch.as_tensor(M.data, dtype=torch.float64))
    else:
        eps = float(torch.finfo(A.values.dtype).eps)
    if A.pattern.shape[1] != probes.shape[1]:
        raise ValueError(f"probes have {probes.shape[1]} entries, the matrix {A.pattern.shape[1]} columns")
    # the whole batch at once, where the values already are (no per-sample SciPy matrices)
    vals = A.values.detach().to(torch.float64)
    A = BatchedCSR(A.pattern, vals)
    absA = BatchedCSR(A.pattern, vals.abs())
    V = torch.as_tensor(probes, dtype=torch.float64, device=vals.device)
    absV = V.abs()
    # per-row round-off of the product, floored by the matrix's own round-off level (rows
    # whose entries are all quadrature round-off, e.g. div(phi_i) of an interior bubble)
    scale = absA.values.amax(dim=1) if A.pattern.nnz else vals.new_zeros(A.batch_size)
    ok = torch.stack([
        (A.matvec(v).abs() <= ROUNDOFF_FACTOR * eps * (absA.matvec(a) + scale[:, None] * a.max())).all(dim=1)
        for v, a in zip(V, absV)
    ], dim=1) & (absV.sum(dim=1) > 0)  # (batch, probe)
    return [(int(b), int(k)) for b, k in torch.nonzero(ok).tolist()]


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
