"""SciPy SuperLU (``scipy.sparse.linalg.splu``) with factor reuse, one factorisation per batch element."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch

from femoe.errors import SingularMatrixError
from femoe.linalg._base import LinearSolver, pattern_cache
from femoe.sparse import BatchedCSR

logger = logging.getLogger(__name__)

# MMD on A^T + A with symmetric mode and no pivoting: 0.88 s at 1e5 DOFs where COLAMD takes
# 1.24 s; MMD_AT_PLUS_A *without* the symmetric options is pathologically slow (MEASURED.md).
_SYMMETRIC_OPTIONS = dict(permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
_GENERAL_OPTIONS = dict(permc_spec="COLAMD")


class SuperLUSolver(LinearSolver):
    """Sparse LU on the CPU, factorised once per batch element, reused for every solve.

    Symmetric batch elements use the MMD(A^T + A) ordering in symmetric mode without pivoting
    (falling back to COLAMD with partial pivoting if that meets a zero pivot, e.g. a symmetric
    indefinite matrix); nonsymmetric ones use COLAMD. Tensors on another device are copied to
    the CPU and the result copied back.

    Parameters
    ----------
    A : BatchedCSR
        Square matrices, batch ``B`` or 1.
    strict : bool
        Accepted for a uniform interface; direct solves always converge or raise.

    Raises
    ------
    SingularMatrixError
        Naming the first batch element SuperLU finds exactly singular.
    """

    name = "superlu"
    options = ("strict",)

    def __init__(self, A: BatchedCSR, *, strict: bool = False):
        super().__init__(A, strict=strict)
        pattern = A.pattern
        cache = pattern_cache(pattern)
        if "int32_indices" not in cache:
            cache["int32_indices"] = (pattern.indices.astype(np.int32), pattern.indptr.astype(np.int32))
        indices, indptr = cache["int32_indices"]
        symmetric = self.symmetric.cpu().numpy()
        values = self.values.cpu().numpy()  # one device-to-host copy for the whole batch
        n = self.n
        self.factors = []
        for b in range(values.shape[0]):
            # The CSR arrays of A are the CSC arrays of A^T: factorise A^T without any format
            # conversion and solve A x = b as (A^T)^T x = b with trans="T".
            At = sp.csc_matrix((values[b], indices, indptr), shape=(n, n))
            self.factors.append(splu_factor(At, bool(symmetric[b]), f"solver {self.name!r}: batch element {b} of A"))

    def _solve(self, b: torch.Tensor, transpose: bool):
        batch, n, k = b.shape
        dtype = np.float64 if self.values.dtype == torch.float64 else np.float32
        rhs = b.detach().cpu().numpy().astype(dtype, copy=False)
        trans = "N" if transpose else "T"  # factors are of A^T
        if len(self.factors) == 1:
            # one factor for the whole batch: a single multi-column solve
            x = self.factors[0].solve(np.ascontiguousarray(rhs.transpose(1, 0, 2).reshape(n, batch * k)), trans=trans)
            x = x.reshape(n, batch, k).transpose(1, 0, 2)
        else:
            x = np.stack([f.solve(rhs[i], trans=trans) for i, f in enumerate(self.factors)])
        out = torch.from_numpy(np.ascontiguousarray(x)).to(device=b.device, dtype=b.dtype)
        return (out, *self._zero_iterations(batch, b.device))


def splu_factor(At: sp.csc_matrix, symmetric: bool, what: str):
    """SuperLU of ``At``: symmetric matrices with MMD(A^T + A) in symmetric mode without pivoting
    (COLAMD with partial pivoting where that meets a zero pivot), others with COLAMD. Raises
    :class:`SingularMatrixError` naming ``what`` for an exactly singular matrix."""
    if symmetric:
        try:
            return sla.splu(At, **_SYMMETRIC_OPTIONS)
        except RuntimeError as err:
            if "singular" not in str(err):
                raise
            logger.debug("%s: symmetric-mode SuperLU hit a zero pivot; retrying with COLAMD", what)
    try:
        return sla.splu(At, **_GENERAL_OPTIONS)
    except RuntimeError as err:
        if "singular" in str(err):
            raise SingularMatrixError(f"{what} is singular ({err}); check the boundary conditions") from err
        raise
