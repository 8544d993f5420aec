"""Block lower-bidiagonal systems by block substitution: a trajectory's Jacobian in its levels."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from femoe.errors import ConfigError
from femoe.linalg._base import LinearSolver, pattern_cache
from femoe.linalg._superlu import splu_factor
from femoe.sparse import BatchedCSR, CSRPattern


def _blocks(pattern: CSRPattern, m: int) -> tuple[list, list]:
    """Per block row ``l``: the entries of its diagonal block ``D_l`` and of its coupling block
    ``C_l`` (columns of block ``l - 1``), each as ``(positions in the values, local column
    indices, local row pointers)`` in CSR order; cached per pattern and block size. Raises
    :class:`ConfigError` for an entry outside the two block diagonals."""
    cache = pattern_cache(pattern)
    key = ("block_bidiagonal", m)
    if key in cache:
        return cache[key]
    n = pattern.shape[0]
    indptr, indices = pattern.indptr, pattern.indices
    rows = np.repeat(np.arange(n), np.diff(indptr))
    off = rows // m - indices // m  # 0: diagonal block, 1: the block to its left
    bad = np.nonzero((off != 0) & (off != 1))[0]
    if bad.size:
        r, c = int(rows[bad[0]]), int(indices[bad[0]])
        raise ConfigError(f"solver 'block_bidiagonal' needs a block lower-bidiagonal matrix with blocks of {m} rows, "
                          f"but entry ({r}, {c}) lies in block ({r // m}, {c // m}); use 'superlu'")
    diag, coupling = [], []
    for lev in range(n // m):
        seg = np.arange(indptr[lev * m], indptr[(lev + 1) * m])  # the block row's entries, CSR order
        for out, which, col0 in ((diag, 0, lev * m), (coupling, 1, (lev - 1) * m)):
            pos = seg[off[seg] == which]
            counts = np.bincount(rows[pos] - lev * m, minlength=m)
            out.append((pos, (indices[pos] - col0).astype(np.int32),
                        np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)))
    cache[key] = (diag, coupling)
    return diag, coupling


class BlockBidiagonalSolver(LinearSolver):
    """``A = [[D_1], [C_2, D_2], ..., [C_T, D_T]]``, ``T`` square blocks of ``block_size`` rows:
    every diagonal block factorised once by SuperLU (COLAMD, partial pivoting: :func:`splu_factor`), ``A x = b`` by
    forward substitution ``x_l = D_l^{-1} (b_l - C_l x_{l-1})`` and ``A^T x = b`` backward.

    A theta-scheme trajectory's Jacobian with respect to its levels ``1..T`` has this form (row
    block ``l``: step ``l``'s residual, which depends on levels ``l`` and ``l - 1``). One sparse LU
    of the whole matrix (``"superlu"``) fills the off-diagonal blocks of its factors with dense
    products of triangular inverses, whatever the ordering; by blocks, the factorisation costs
    ``T`` factorisations of one level's matrix and a solve ``T`` triangular solves of it. Direct,
    so it always converges. CPU (SciPy); tensors on another device are copied.

    Parameters
    ----------
    A : BatchedCSR
        Square matrices of size ``T * block_size``, batch ``B`` or 1.
    block_size : int
        Rows per block (one level's unknowns).
    strict : bool
        Accepted for a uniform interface.

    Raises
    ------
    ConfigError
        ``block_size`` does not divide the size, or an entry lies outside the two block diagonals.
    SingularMatrixError
        Naming the batch element and block of a singular diagonal block.
    """

    name = "block_bidiagonal"
    options = ("strict", "block_size")

    def __init__(self, A: BatchedCSR, *, block_size: int | None = None, strict: bool = False):
        super().__init__(A, strict=strict)
        if block_size is None:
            raise ConfigError("solver 'block_bidiagonal' needs block_size=, the rows of one block (one level's "
                              "unknowns); patch mode fills it in")
        m = int(block_size)
        if m < 1 or self.n % m:
            raise ConfigError(f"solver 'block_bidiagonal': block_size must divide the size {self.n}; got {block_size}")
        diag, coupling = _blocks(A.pattern, m)
        self.m, self.T = m, self.n // m
        values = self.values.cpu().numpy()  # one device-to-host copy for the whole batch
        self.factors, self.coupling = [], []
        for b in range(values.shape[0]):
            factors, blocks = [], []
            for lev, ((dp, di, dr), (cp, ci, cr)) in enumerate(zip(diag, coupling)):
                # the CSR arrays of D are the CSC arrays of D^T: factorise D^T, solve with trans="T"
                Dt = sp.csc_matrix((values[b, dp], di, dr), shape=(m, m))
                factors.append(splu_factor(Dt, False, f"solver 'block_bidiagonal': diagonal block {lev} of batch "
                                                      f"element {b}"))
                blocks.append(sp.csr_matrix((values[b, cp], ci, cr), shape=(m, m)) if lev else None)
            self.factors.append(factors)
            self.coupling.append(blocks)

    def _solve(self, b: torch.Tensor, transpose: bool):
        batch, n, k = b.shape
        dtype = np.float64 if self.values.dtype == torch.float64 else np.float32
        rhs = b.detach().cpu().numpy().astype(dtype, copy=False)
        x = np.empty((batch, n, k), dtype=dtype)
        m, T = self.m, self.T
        trans = "N" if transpose else "T"  # the factors are of D^T
        for i in range(batch):
            factors, C = self.factors[i % len(self.factors)], self.coupling[i % len(self.coupling)]
            levels = range(T - 1, -1, -1) if transpose else range(T)
            for lev in levels:
                r = rhs[i, lev * m:(lev + 1) * m]
                if transpose and lev + 1 < T:
                    r = r - C[lev + 1].T @ x[i, (lev + 1) * m:(lev + 2) * m]
                elif not transpose and lev:
                    r = r - C[lev] @ x[i, (lev - 1) * m:lev * m]
                x[i, lev * m:(lev + 1) * m] = factors[lev].solve(np.ascontiguousarray(r), trans=trans)
        out = torch.from_numpy(x).to(device=b.device, dtype=b.dtype)
        return (out, *self._zero_iterations(batch, b.device))
