"""Fields fixed by a linear algebraic equation of the others, computed instead of learned.

A mixed problem often holds one field that is not evolved but determined, at every time level,
by a linear equation in the others: Navier-Stokes' streamfunction from the vorticity
(``(K + alpha M) psi = M omega``), a pressure from a Poisson equation, a potential from a
charge. If a network spans such a field with its own basis functions, a least-squares
constraint layer (PI-HC) must trade that equation's rows against the evolution rows, and its
solution satisfies neither. Computing the field from the others makes the equation hold
exactly for every member of the span, so the layer's rows reduce to the evolution rows.

For a basis ``B`` (``(..., n, N)``) :class:`AlgebraicFields` returns ``B`` with the rows of the
free DOFs ``f`` projected onto the equation's solvability condition, if it has one, and the rows of
the derived DOFs ``d`` replaced by ``A^{-1} C B[..., f, :]`` (``f`` the DOFs the equation reads): one
sparse solve with ``N x (leading sizes)`` right-hand sides, differentiable in ``B`` (the backward is
one adjoint solve, :func:`femoe.linalg.solve_with`; ``A`` is factorised once per device and
dtype). Because the map is linear, ``B w`` satisfies ``A u_d = C u_f`` for every ``w``; applied to
a single field (``N = 1``, the soft constraint's output) it does the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from femoe.errors import ShapeError
from femoe.sparse import BatchedCSR, CSRPattern


@dataclass
class AlgebraicFields:
    """``u[derived] = A^{-1} C u[free]``, applied to every column of a basis.

    Parameters
    ----------
    free, derived : array of int
        DOF indices (into the problem's ``n`` DOFs) the equation reads and the ones it fixes;
        disjoint.
    A : scipy sparse ``(len(derived), len(derived))``
        Nonsingular (for Navier-Stokes, ``K + alpha M``).
    C : scipy sparse ``(len(derived), len(free))``
    n : int
        The problem's DOF count (checked against the basis).
    solvability : array ``(len(free),)``, optional
        Weights ``m`` of a solvability condition ``m . u[free] = 0`` the free fields must meet
        (a periodic or pure-Neumann Poisson equation: the vorticity's mean, ``m = M 1``). The
        free rows of the basis are first projected onto it, ``x - (m . x / m . 1) 1``, so every
        member of the span meets it; without it a near-singular ``A`` (``K + alpha M``, small
        ``alpha``) would turn a free field's mean into a derived field of size ``mean / alpha``.
    gauge : array ``(len(derived),)``, optional
        Weights ``g`` of the derived field's gauge, ``g . u[derived] = 0``, which the exact
        solution meets when the solvability condition holds (for ``K + alpha M`` and ``m = M 1``:
        ``alpha 1^T M psi = 1^T M omega = 0``). The solve's result is projected onto it, which
        removes the round-off that ``A``'s near-null mode would amplify (by ``1 / alpha``).
    """

    free: np.ndarray
    derived: np.ndarray
    A: sp.spmatrix
    C: sp.spmatrix
    n: int
    solvability: np.ndarray | None = None
    gauge: np.ndarray | None = None

    def __post_init__(self):
        self.free = np.asarray(self.free, dtype=np.int64)
        self.derived = np.asarray(self.derived, dtype=np.int64)
        nd, nf = self.derived.size, self.free.size
        if self.A.shape != (nd, nd) or self.C.shape != (nd, nf):
            raise ShapeError(f"AlgebraicFields: A must be {nd} x {nd} and C {nd} x {nf} for {nd} derived and {nf} "
                             f"free DOFs; got {self.A.shape} and {self.C.shape}")
        if np.intersect1d(self.free, self.derived).size:
            raise ShapeError("AlgebraicFields: the free and derived DOFs overlap")
        if max(self.free.max(initial=-1), self.derived.max(initial=-1)) >= self.n:
            raise ShapeError(f"AlgebraicFields: DOF indices beyond the problem's {self.n} DOFs")
        A = sp.csr_matrix(self.A, dtype=np.float64)
        self._pattern = CSRPattern.from_scipy(A)
        A.sum_duplicates()
        A.sort_indices()
        self._a_values = np.asarray(A.data)
        C = sp.coo_matrix(self.C, dtype=np.float64)
        self._c = (C.row.astype(np.int64), C.col.astype(np.int64), C.data)
        if self.solvability is not None:
            m = np.asarray(self.solvability, dtype=np.float64)
            if m.shape != (nf,) or not np.isfinite(m).all() or m.sum() == 0:
                raise ShapeError(f"AlgebraicFields: solvability must be {nf} finite weights with a nonzero sum")
            self.solvability = m
        if self.gauge is not None:
            g = np.asarray(self.gauge, dtype=np.float64)
            if g.shape != (nd,) or not np.isfinite(g).all() or g.sum() == 0:
                raise ShapeError(f"AlgebraicFields: gauge must be {nd} finite weights with a nonzero sum")
            self.gauge = g
        self._device_cache: dict = {}

    def _on(self, device: torch.device, dtype: torch.dtype):
        key = (str(device), dtype)
        if key not in self._device_cache:
            from femoe.linalg import make_solver

            rows, cols, vals = self._c
            A = BatchedCSR(self._pattern, torch.as_tensor(self._a_values, dtype=dtype, device=device)[None])
            self._device_cache[key] = (
                make_solver("auto", A),  # A is constant: factorised once per device and dtype
                torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device),
                torch.as_tensor(vals, dtype=dtype, device=device),
                torch.as_tensor(self.free, device=device), torch.as_tensor(self.derived, device=device),
                *(None if v is None else torch.as_tensor(v / v.sum(), dtype=dtype, device=device)
                  for v in (self.solvability, self.gauge)))
        return self._device_cache[key]

    def __call__(self, B: torch.Tensor) -> torch.Tensor:
        """``B`` ``(..., n, N)`` with its derived rows recomputed from its free rows."""
        from femoe.linalg import solve_with

        if B.dim() < 2 or B.shape[-2] != self.n:
            raise ShapeError(f"AlgebraicFields: expected a basis (..., {self.n}, N); got {tuple(B.shape)}")
        if not B.dtype.is_floating_point:
            raise ShapeError(f"AlgebraicFields: the basis must be floating point; got {B.dtype}")
        solver, rows, cols, vals, free, derived, m, g = self._on(B.device, B.dtype)
        lead, N = B.shape[:-2], B.shape[-1]
        Xf = B.index_select(-2, free).movedim(-2, 0).reshape(free.numel(), -1)  # (n_f, cols)
        if m is not None:  # onto the solvability condition m . x = 0
            Xf = Xf - (m @ Xf)[None, :]
            B = B.index_copy(-2, free, Xf.reshape(free.numel(), *lead, N).movedim(0, -2))
        rhs = Xf.new_zeros(derived.numel(), Xf.shape[1]).index_add(0, rows, vals[:, None] * Xf[cols])
        Xd = solve_with(solver, rhs[None])[0]  # (n_d, cols)
        if g is not None:
            Xd = Xd - (g @ Xd)[None, :]
        Xd = Xd.reshape(derived.numel(), *lead, N).movedim(0, -2)
        return B.index_copy(-2, derived, Xd)

    def residual(self, u: torch.Tensor) -> torch.Tensor:
        """``A u[derived] - C u[free]`` of fields ``u`` ``(..., n)``: zero, up to round-off, for
        every member of a completed basis' span."""
        x = u.detach().cpu().double().numpy().reshape(-1, self.n)
        r = (self.A @ x[:, self.derived].T - self.C @ x[:, self.free].T).T
        return torch.as_tensor(r.reshape(*u.shape[:-1], self.derived.size))
