r"""Diffusion-sorption in 1D (PDEBench; the first system of Chalapathi et al., ICLR 2024).

PDE
---
Diffusion of a contaminant through soil with Freundlich sorption, on ``x in [0, 1]``,
``t in [0, T]`` (``T = 500`` s):

.. math::

    R(u)\, u_t = D\, u_{xx}, \qquad
    R(u) = 1 + \frac{1 - \phi}{\phi}\, \rho_s\, k_f\, n_f\, (u + \varepsilon)^{n_f - 1},

with ``D = 5e-4``, porosity ``phi = 0.29``, bulk density ``rho_s = 2880``, Freundlich
parameter ``k_f = 3.5e-4`` and exponent ``n_f = 0.874``. ``R(u)`` is singular at ``u = 0``
because ``n_f - 1 < 0``; PDEBench's generator regularises it with ``eps = 1e-6`` and so do
we (parameter ``eps``).

We write the equation in conservative form, ``d/dt m(u) = D u_xx`` with the storage
``m(u) = u + (1 - phi) / phi * rho_s * k_f * (u + eps)^n_f`` (so that ``m'(u) = R(u)``),
which makes the discrete scheme conserve mass exactly. For ``u < 0``, which the exact
solution never reaches but a discrete one may by round-off, the sorption term is frozen at
its ``u = 0`` value (``m(u) = u + m_s(0)``), so that ``m`` stays defined.

Boundary and initial conditions
-------------------------------
* ``u(0, t) = 1`` (Dirichlet, tag ``"left"``).
* At ``x = 1`` PDEBench's paper (and the reference paper's code) write ``u(1, t) = D u_x(1, t)``.
  Read literally this is an inflow condition that feeds mass in at rate ``u``; it is ill-posed
  on fine grids (a finite-volume solution at 1024 cells blows up). PDEBench's own generator
  effectively imposes the outflow condition ``u(1, t) = -D u_x(1, t)``: mass leaves at rate
  ``u``. We use the outflow condition (tag ``"right"``).
* ``u(x, 0) = u_0``: a value constant in ``x`` drawn uniformly from ``[0, ic_max]`` per sample
  (``ic_max = 0.2``; PDEBench's generator), or, with ``ic="random_field"``, a smooth random
  field ``u_0 = ic_max * sigmoid(g(x))`` with ``g`` a Gaussian random field (squared-exponential
  covariance, length scale ``ic_length``, unit variance, random Fourier features).

Weak form (P1 on a uniform mesh of ``n_cells = 1024`` cells)
------------------------------------------------------------
Find ``u`` with ``u(0) = 1`` such that for all ``v`` with ``v(0) = 0``

.. math::

    \int_0^1 \partial_t m(u)\, v\, dx + \int_0^1 D\, u_x v_x\, dx + u(1)\, v(1) = 0 ,

the boundary term being ``-D u_x(1) v(1) = u(1) v(1)`` (outflow). In :class:`~femoe.problem.Problem`
terms: storage ``m(u) v``, residual ``D u_x v_x``, facet term ``u v`` on ``"right"``, Dirichlet
``"left": u_left``; the time scheme of the returned problem is the theta scheme with
``theta = 1`` (implicit Euler) unless overridden. These are the rows the constraint layers and
the physics loss use at the saved interval (``dt = T / (n_saved - 1)``, 10 s on the CPU
configs): there the exact solution of the Crank-Nicolson rows carries an undamped sawtooth in
time at ``x = 1`` (the jump between the initial value and the outflow condition) and is 2.7 %
from the reference (128 cells, 51 levels, ``benchmarks/sweep_ds.py``), that of implicit Euler
1.4 %; with a near-perfect basis PI-HC reaches 2-4 % with implicit-Euler rows and 20-29 % with
Crank-Nicolson rows (issue 14). The reference itself is always marched with Crank-Nicolson at
fine steps (below), whatever ``theta`` says.

Reference solution
------------------
The same discrete equations (same quadrature, checked against ``Problem.step_residual`` in
the tests), marched with Crank-Nicolson at ``substeps`` steps per saved interval
(``T / (n_saved - 1) = 5`` s) and a Rannacher start: the first ``4`` steps are replaced by 8
implicit-Euler half steps, which damps the jump between the initial value and the boundary
value at ``x = 0``. The first saved interval is graded dyadically (``grading`` sub-intervals
``[0, 5/2^J], [5/2^J, 5/2^(J-1)], ..., [2.5, 5]``, each with ``substeps`` steps) because the
boundary layer at ``x = 0`` evolves on a time scale of milliseconds at first. Newton with a
tridiagonal (banded) solve runs every step. 101 levels are saved, ``t = 0, 5, ..., 500``.

Samples in batches (:func:`march_batch`, used by :meth:`DiffusionSorption1D.reference` and
``femoe generate``): all samples of a batch advance together, one Newton per step on the
block-diagonal system (one LAPACK ``ptsv`` call for all of them), each sample frozen once it
passes the update test of the one-at-a-time Newton (:func:`march`) and an error naming any
sample that does not. Each sample gets exactly the arithmetic it would get alone, so its
trajectory does not depend, to the last bit, on the other samples of its batch; it equals
:func:`march`'s to round-off (``tests/test_generate_batched.py``).

Time-step refinement study (``benchmarks/bench_generate.py``; constant initial values 0.02 / 0.1 /
0.2; largest relative L2 change of any saved level when ``substeps`` doubles; it is always the
level t = 10 s):

=============  ==========================  ==========================  ==========================
substeps       u0 = 0.02                   u0 = 0.1                    u0 = 0.2
=============  ==========================  ==========================  ==========================
16 -> 32       2.6e-5                      2.0e-5                      1.3e-5
32 -> 64       6.5e-6                      4.9e-6                      3.3e-6
64 -> 128      1.6e-6                      1.2e-6                      8.3e-7
=============  ==========================  ==========================  ==========================

Second order (each doubling divides the change by 4). ``substeps = 64`` (6912 steps per
trajectory) is the default: refining from 32 to 64 changes the saved levels by less than 1e-5,
and by Richardson's estimate the remaining time error of the default is about 2e-6. Against an
independent cell-centred finite-volume solution (scipy BDF, 1024 cells) the relative L2
difference over space-time is 6e-6 (``tests/test_problems_diffusion_sorption.py``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import skfem as fe
import torch
from scipy.linalg import solve_banded

from femoe.errors import ConvergenceError, ParameterError
from femoe.helpers import dot, grad
from femoe.problem import Problem
from femoe.problems._base import Param, ProblemSpec, nonnegative, open_unit, positive, positive_int

log = logging.getLogger(__name__)

_IC_KINDS = ("constant", "random_field")


def _positive_part(x):
    """``max(x, 0)`` for torch fields (femoe) and numpy arrays (scikit-fem)."""
    if hasattr(x, "value") and isinstance(x.value, torch.Tensor):
        return torch.clamp(x.value, min=0.0)
    if isinstance(x, torch.Tensor):
        return torch.clamp(x, min=0.0)
    return np.maximum(x, 0.0)


def sorption_constant(params: dict[str, Any]) -> float:
    """``(1 - phi) / phi * rho_s * k_f``."""
    return (1.0 - params["phi"]) / params["phi"] * params["rho_s"] * params["k_f"]


def storage_value(u: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """``m(u) = u + c (max(u, 0) + eps)^n_f`` (numpy)."""
    c = sorption_constant(params)
    return u + c * (np.maximum(u, 0.0) + params["eps"]) ** params["n_f"]


def retardation(u: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """``R(u) = m'(u) = 1 + c n_f (u + eps)^(n_f - 1)`` for ``u >= 0`` and ``1`` below (numpy)."""
    c = sorption_constant(params)
    up = np.maximum(u, 0.0)
    return 1.0 + np.where(u >= 0, c * params["n_f"] * (up + params["eps"]) ** (params["n_f"] - 1.0), 0.0)


class DiffusionSorption1D(ProblemSpec):
    """PDEBench's 1D diffusion-sorption problem (see the module docstring)."""

    name = "diffusion_sorption_1d"
    steady = False
    element = "ElementLineP1"
    mesh_file = None  # a uniform skfem.MeshLine with n_cells cells, tags "left" and "right"
    description = "R(u) u_t = D u_xx, Freundlich sorption, u(0)=1, outflow at x=1 (PDEBench)"
    params = {
        "D": Param(5e-4, positive, "> 0", "diffusivity"),
        "phi": Param(0.29, open_unit, "in (0, 1)", "porosity"),
        "rho_s": Param(2880.0, positive, "> 0", "bulk density"),
        "k_f": Param(3.5e-4, nonnegative, ">= 0", "Freundlich parameter"),
        "n_f": Param(0.874, positive, "> 0", "Freundlich exponent"),
        "eps": Param(1e-6, positive, "> 0", "regularisation of (u + eps)^(n_f - 1)"),
        "u_left": Param(1.0, nonnegative, ">= 0", "Dirichlet value at x = 0"),
        "T": Param(500.0, positive, "> 0", "final time [s]"),
        "n_saved": Param(101, lambda n: positive_int(n) and n >= 2, "an integer >= 2",
                         "saved time levels including t = 0", int),
        "n_cells": Param(1024, lambda n: positive_int(n) and n >= 2, "an integer >= 2", "P1 cells", int),
        "substeps": Param(64, lambda n: positive_int(n) and n >= 8, "an integer >= 8",
                          "Crank-Nicolson steps per saved interval", int),
        "grading": Param(8, lambda n: int(n) == n and n >= 0, "an integer >= 0",
                         "dyadic sub-intervals of the first saved interval", int),
        "theta": Param(1.0, lambda t: 0 <= t <= 1, "in [0, 1]",
                       "theta of the returned Problem's rows (1: implicit Euler; the reference is always CN)"),
        "ic": Param("constant", lambda s: s in _IC_KINDS, f"one of {_IC_KINDS}", "", str),
        "ic_max": Param(0.2, positive, "> 0", "initial values are drawn in [0, ic_max]"),
        "ic_length": Param(0.1, positive, "> 0", "length scale of the random-field IC"),
    }

    def _check_combination(self, params: dict[str, Any]) -> None:
        if params["n_f"] < 1 and params["eps"] <= 0:
            raise ParameterError("diffusion_sorption_1d: eps must be > 0 when n_f < 1 (R(u) is singular at 0)")

    # ------------------------------------------------------------------ problem
    def _build(self, params: dict[str, Any]) -> Problem:
        n = params["n_cells"]
        mesh = fe.MeshLine(np.linspace(0.0, 1.0, n + 1)).with_boundaries(
            {"left": lambda x: np.isclose(x[0], 0.0), "right": lambda x: np.isclose(x[0], 1.0)}
        )
        basis = fe.Basis(mesh, fe.ElementLineP1())
        c, n_f, eps, D = sorption_constant(params), params["n_f"], params["eps"], params["D"]

        def storage(u, v, w):
            return (u + c * (_positive_part(u) + eps) ** n_f) * v

        def diffusion(u, v, w):
            return D * dot(grad(u), grad(v))

        def outflow(u, v, w):
            return u * v

        return Problem(basis, diffusion, facets={"right": outflow}, dirichlet={"left": params["u_left"]},
                       storage=storage, theta=params["theta"], name=self.name)

    def sample_inputs(self, rng: np.random.Generator, n: int, problem: Problem | None = None) -> np.ndarray:
        """``n`` initial conditions as nodal values, shape ``(n, n_cells + 1)``."""
        problem = problem if problem is not None else self.build()
        p = problem.config
        x = problem.doflocs[0]
        if p["ic"] == "constant":
            values = rng.uniform(0.0, p["ic_max"], size=n)
            return np.repeat(values[:, None], x.size, axis=1)
        g = random_fourier_field(rng, n, x[None, :], p["ic_length"])
        return p["ic_max"] / (1.0 + np.exp(-g))

    def reference(self, problem: Problem, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # the batched solver with one sample: bit for bit what ``femoe generate`` stores for it
        times, U = march_batch(problem, np.asarray(sample, dtype=float).reshape(1, -1))
        return times, U[0]

    def reference_batch(self, problem: Problem, samples: np.ndarray,
                        sample_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """All ``samples`` ``(b, n)`` marched together (:func:`march_batch`): ``(times, U)``,
        ``U`` of shape ``(b, n_saved, n)``."""
        return march_batch(problem, np.asarray(samples, dtype=float), sample_ids=sample_ids)


def random_fourier_field(rng: np.random.Generator, n: int, x: np.ndarray, length: float,
                         features: int = 256) -> np.ndarray:
    """``n`` samples of a unit-variance Gaussian random field with squared-exponential covariance
    ``exp(-|x - y|^2 / (2 length^2))`` at points ``x`` ``(dim, m)``, by random Fourier features."""
    dim = x.shape[0]
    omega = rng.standard_normal((n, features, dim)) / length
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, features, 1))
    return math.sqrt(2.0 / features) * np.cos(omega @ x + phase).sum(axis=1)


class _Operator:
    """The P1 discrete operators of a diffusion-sorption problem, in numpy (banded)."""

    def __init__(self, problem: Problem):
        p = problem.config
        self.p = p
        basis = problem.basis
        self.n = problem.n
        ed = np.asarray(basis.element_dofs)
        if not np.all(ed[1] - ed[0] == 1):
            raise ParameterError("the diffusion-sorption reference needs a mesh numbered along x")
        self.ed = ed
        self.phi = np.stack([np.asarray(basis.basis[a][0]) for a in range(2)])  # (2, nel, nqp)
        self.dx = np.asarray(basis.dx)
        K = fe.BilinearForm(lambda u, v, w: u.grad[0] * v.grad[0]).assemble(basis).tocsr()
        A = p["D"] * K
        right = int(np.argmax(problem.doflocs[0]))
        A = A.tolil()
        A[right, right] += 1.0  # outflow facet term u v at x = 1
        self.A = A.tocsr()
        self.A_band = _to_band(self.A)
        self.dirichlet = np.asarray(problem.dirichlet_dofs)
        self.g = float(p["u_left"])

    def storage(self, u: np.ndarray, jacobian: bool):
        uq = np.einsum("aeq,ae->eq", self.phi, u[self.ed])
        m = storage_value(uq, self.p) * self.dx
        r = np.bincount(self.ed[0], (m * self.phi[0]).sum(1), minlength=self.n)
        r += np.bincount(self.ed[1], (m * self.phi[1]).sum(1), minlength=self.n)
        if not jacobian:
            return r, None
        dm = retardation(uq, self.p) * self.dx
        # element e couples i = ed[0, e] and i + 1 = ed[1, e]; band[1 + i - j, j] = J[i, j]
        band = np.zeros((3, self.n))
        band[1] = np.bincount(self.ed[0], (dm * self.phi[0] ** 2).sum(1), minlength=self.n)
        band[1] += np.bincount(self.ed[1], (dm * self.phi[1] ** 2).sum(1), minlength=self.n)
        off = (dm * self.phi[0] * self.phi[1]).sum(1)
        band[0, self.ed[1]] = off
        band[2, self.ed[0]] = off
        return r, band

    def step(self, u_old: np.ndarray, dt: float, theta: float, t_new: float) -> tuple[np.ndarray, int]:
        """One theta step ``(m(u) - m(u_old)) / dt + theta A u + (1 - theta) A u_old = 0``."""
        s_old, _ = self.storage(u_old, False)
        rhs_old = s_old / dt - (1.0 - theta) * (self.A @ u_old)
        u = u_old.copy()
        u[self.dirichlet] = self.g
        for it in range(1, 31):
            s, band = self.storage(u, True)
            R = s / dt + theta * (self.A @ u) - rhs_old
            J = band / dt + theta * self.A_band
            R[self.dirichlet] = 0.0
            for d in self.dirichlet:  # row d of the band matrix becomes the identity row
                J[1, d] = 1.0
                if d + 1 < self.n:
                    J[0, d + 1] = 0.0
                if d >= 1:
                    J[2, d - 1] = 0.0
            du = solve_banded((1, 1), J, -R)
            u += du
            # quadratic convergence: after an update of 1e-9 the error is ~1e-18
            if np.max(np.abs(du)) <= 1e-9 * max(1.0, np.max(np.abs(u))):
                return u, it
        raise ConvergenceError(f"diffusion_sorption_1d: Newton did not converge at t = {t_new:g} "
                               f"(last update {np.max(np.abs(du)):.2e}); increase substeps")

    # ------------------------------------------------------------------ many samples at once
    # The batched path (march_batch) does for each sample exactly the arithmetic it does for the
    # others, element by element (no reduction across samples; the block-diagonal tridiagonal
    # solve has exact zeros between blocks), so a sample's trajectory is bit for bit the same
    # whichever samples share its batch. It equals the one-at-a-time path (step) to round-off:
    # the linear part of m(u) is applied as the consistent mass matrix and (u + eps)^n_f as
    # (u + eps)^(n_f - 1) (u + eps), which changes the last bits, not the equations.
    def _batch_setup(self) -> None:
        if getattr(self, "_mass", None) is not None:
            return
        e0, e1 = self.ed
        if np.unique(e0).size != e0.size:
            raise ParameterError("the diffusion-sorption reference needs a mesh numbered along x")
        # a mesh whose elements run left to right: neighbours are slices, not gathers
        self._sliced = bool(np.array_equal(e0, np.arange(self.n - 1)))
        phi0, phi1 = self.phi
        dx = self.dx
        # quadrature weights (nel, nqp) of int m phi_a and of int R phi_a phi_b
        self._w = {"0": phi0 * dx, "1": phi1 * dx, "00": phi0 * phi0 * dx, "01": phi0 * phi1 * dx,
                   "11": phi1 * phi1 * dx}
        # the consistent mass matrix (the linear part u of m(u)) as diag (n,) and off-diagonal (n - 1,)
        mass_diag = np.zeros(self.n)
        mass_diag[e0] += self._w["00"].sum(1)
        mass_diag[e1] += self._w["11"].sum(1)
        mass_off = np.zeros(self.n - 1)
        mass_off[e0] = self._w["01"].sum(1)
        self._mass = (mass_diag, mass_off)
        self._c = sorption_constant(self.p)
        c, cj = self._c, self._c * self.p["n_f"]
        # (nqp, nel) copies for the batched sums; the sorption constant (and n_f) folded in
        self._phiT = (np.ascontiguousarray(phi0.T), np.ascontiguousarray(phi1.T))
        self._wT = {"0": c * self._w["0"].T, "1": c * self._w["1"].T, "00": cj * self._w["00"].T,
                    "01": cj * self._w["01"].T, "11": cj * self._w["11"].T}

    def _ends(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The values at the left and right node of every element, ``(b, nel)`` each."""
        if self._sliced:
            return U[:, :-1], U[:, 1:]
        return U[:, self.ed[0]], U[:, self.ed[1]]

    def _scatter(self, out: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
        """``out[:, e0] += left``, ``out[:, e1] += right`` (each node once per side)."""
        if self._sliced:
            out[:, :-1] += left
            out[:, 1:] += right
        else:
            out[:, self.ed[0]] += left
            out[:, self.ed[1]] += right

    @staticmethod
    def _tri_apply(diag: np.ndarray, off: np.ndarray, U: np.ndarray) -> np.ndarray:
        """``T u`` for each row of ``U`` ``(b, n)``, ``T`` symmetric tridiagonal."""
        out = diag * U
        out[:, :-1] += off * U[:, 1:]
        out[:, 1:] += off * U[:, :-1]
        return out

    def sorption_batch(self, U: np.ndarray, scale: float, jacobian: bool):
        """The sorption part ``c (max(u, 0) + eps)^n_f`` of the storage of ``b`` states ``U``
        ``(b, n)``, integrated against the test functions and times ``scale``: ``r`` ``(b, n)``
        and, with ``jacobian``, its Jacobian as ``(diag (b, n), off (b, n - 1))`` with
        ``off[:, i] = dr_i / du_{i+1} = dr_{i+1} / du_i``."""
        self._batch_setup()
        b = U.shape[0]
        n_f, eps = self.p["n_f"], self.p["eps"]
        w = self._wT
        UL, UR = self._ends(U)
        # all quadrature points at once, (b, nqp, nel); sums over the points run in a fixed order
        uq = UL[:, None, :] * self._phiT[0]
        uq += UR[:, None, :] * self._phiT[1]
        base = np.maximum(uq, 0.0)
        base += eps
        pw = np.power(base, n_f - 1.0)  # one power for m(u) and for R(u) = m'(u)
        base *= pw  # (u + eps)^n_f
        r = np.zeros((b, self.n))
        self._scatter(r, (base * (scale * w["0"])).sum(axis=1), (base * (scale * w["1"])).sum(axis=1))
        if not jacobian:
            return r, None
        np.copyto(pw, 0.0, where=uq < 0)  # m is linear below 0
        diag = np.zeros((b, self.n))
        self._scatter(diag, (pw * (scale * w["00"])).sum(axis=1), (pw * (scale * w["11"])).sum(axis=1))
        off = (pw * (scale * w["01"])).sum(axis=1)
        return r, (diag, off)

    def step_batch(self, U_old: np.ndarray, dt: float, theta: float, t_new: float,
                   sample_ids=None, guess: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` for ``b`` states ``U_old`` ``(b, n)`` at once: one Newton on the
        block-diagonal system, each sample frozen once its own update test (the one of
        :meth:`step`) passes. Returns ``(U, iterations)`` (``iterations`` per sample).

        Raises :class:`~femoe.errors.ConvergenceError` naming the samples (``sample_ids``, or
        their rows in ``U_old``) that did not converge in 30 iterations; nothing unconverged is
        returned."""
        self._batch_setup()
        b, n = U_old.shape
        ids = np.arange(b) if sample_ids is None else np.asarray(sample_ids)
        M_d, M_o = self._mass
        A_d, A_o = self.A_band[1], self.A_band[0, 1:]  # A is symmetric
        # the rows (m(u) - m(u_old)) / dt + theta A u + (1 - theta) A u_old; linear part K u
        K_d, K_o = M_d / dt + theta * A_d, M_o / dt + theta * A_o
        s_old, _ = self.sorption_batch(U_old, 1.0 / dt, False)
        rhs_old = s_old + self._tri_apply(M_d / dt - (1.0 - theta) * A_d, M_o / dt - (1.0 - theta) * A_o, U_old)
        U = (U_old if guess is None else guess).copy()  # Newton's start (default: the old state)
        U[:, self.dirichlet] = self.g
        iterations = np.zeros(b, dtype=np.int64)
        active = np.arange(b)
        rows = self.dirichlet
        for it in range(1, 31):
            every = active.size == b
            Ua = U if every else U[active]
            s, (diag, off) = self.sorption_batch(Ua, 1.0 / dt, True)
            R = s + self._tri_apply(K_d, K_o, Ua) - (rhs_old if every else rhs_old[active])
            # the Jacobian is symmetric positive definite (R(u) > 0 times a mass matrix, plus theta
            # A); the Dirichlet rows become identity rows and, as their update is 0, their columns
            # are dropped too, which keeps it symmetric
            D = diag + K_d
            E = np.zeros(diag.shape)  # J[i, i + 1] = J[i + 1, i] in E[:, i]; the last column stays 0
            np.add(off, K_o, out=E[:, :-1])
            R[:, rows] = 0.0
            D[:, rows] = 1.0
            E[:, rows] = 0.0
            E[:, rows[rows >= 1] - 1] = 0.0
            finite = np.isfinite(R).all(axis=1) & np.isfinite(D).all(axis=1) & np.isfinite(E).all(axis=1)
            if not finite.all():  # one block's NaN would reach its neighbours through 0 * NaN
                bad = [int(i) for i in ids[active[~finite]]]
                raise ConvergenceError(f"diffusion_sorption_1d: non-finite Newton system at t = {t_new:g} for "
                                       f"sample(s) {bad}; check the initial values", info={"samples": bad, "t": t_new})
            du = _solve_spd_tridiagonal_blocks(D, E, -R, ids[active])
            Ua += du
            if not every:
                U[active] = Ua
            done = np.abs(du).max(axis=1) <= 1e-9 * np.maximum(1.0, np.abs(Ua).max(axis=1))
            iterations[active[done]] = it
            active = active[~done]
            if active.size == 0:
                return U, iterations
        bad = [int(i) for i in ids[active]]
        raise ConvergenceError(f"diffusion_sorption_1d: Newton did not converge at t = {t_new:g} for sample(s) "
                               f"{bad} (last update {np.abs(du[~done]).max():.2e}); increase substeps",
                               info={"samples": bad, "t": t_new})


def _solve_spd_tridiagonal_blocks(diag: np.ndarray, off: np.ndarray, rhs: np.ndarray, ids) -> np.ndarray:
    """Solve ``b`` symmetric positive definite tridiagonal systems as one block-diagonal system
    with LAPACK ``ptsv`` (L D L^T). ``diag`` ``(b, n)``; ``off[:, i] = J[i, i + 1]`` ``(b, n)``
    with the last column 0: the entries coupling the blocks are exact zeros, so each block's
    factors and solution are the ones it gets alone. The arrays are overwritten."""
    from scipy.linalg.lapack import dptsv

    b, n = diag.shape
    _, _, x, info = dptsv(diag.reshape(-1), off.reshape(-1)[:-1], rhs.reshape(-1),
                          overwrite_d=True, overwrite_e=True, overwrite_b=True)
    if info > 0:
        bad = int(ids[(info - 1) // n])
        raise ConvergenceError(f"diffusion_sorption_1d: Newton matrix not positive definite for sample {bad}",
                               info={"samples": [bad]})
    if info < 0:
        raise ValueError(f"illegal value in argument {-info} of ptsv")
    return x.reshape(b, n)


def _to_band(A) -> np.ndarray:
    A = A.tocoo()
    band = np.zeros((3, A.shape[0]))
    np.add.at(band, (1 + A.row - A.col, A.col), A.data)
    return band


def march(problem: Problem, u0: np.ndarray, substeps: int | None = None,
          grading: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference trajectory of a diffusion-sorption problem from nodal initial values ``u0``.

    Returns ``(times, U)``: ``n_saved`` levels ``t = 0, dT, ..., T``, ``U`` of shape
    ``(n_saved, n)`` with ``U[0] = u0``. ``substeps``/``grading`` override the problem's
    settings (for refinement studies).
    """
    p = problem.config
    m = int(substeps if substeps is not None else p["substeps"])
    J = int(grading if grading is not None else p["grading"])
    op = _Operator(problem)
    n_int = p["n_saved"] - 1
    dT = p["T"] / n_int
    n_start = 4
    u = np.array(u0, dtype=float).reshape(problem.n)
    saved = [u.copy()]
    newton = 0
    steps = 0
    t = 0.0
    for k in range(n_int):
        bounds = [0.0] + [dT / 2**j for j in range(J, -1, -1)] if k == 0 else [t, t + dT]
        for a, b in zip(bounds[:-1], bounds[1:]):
            dt = (b - a) / m
            done = 0
            if steps == 0:  # Rannacher start: 2 * n_start implicit-Euler half steps
                for i in range(2 * n_start):
                    u, it = op.step(u, dt / 2, 1.0, a + (i + 1) * dt / 2)
                    newton += it
                done = n_start
            for i in range(done, m):
                u, it = op.step(u, dt, 0.5, a + (i + 1) * dt)
                newton += it
            steps += m
        t = (k + 1) * dT
        saved.append(u.copy())
    log.debug("diffusion_sorption_1d: %d steps, %d Newton iterations", steps, newton)
    problem.last_reference_info = {"steps": steps, "newton_iterations": newton}
    return np.linspace(0.0, p["T"], n_int + 1), np.stack(saved)


def march_batch(problem: Problem, U0: np.ndarray, substeps: int | None = None, grading: int | None = None,
                sample_ids=None, predictor: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`march` for ``b`` initial states ``U0`` ``(b, n)`` advanced together (one batched
    Newton per step, see :meth:`_Operator.step_batch`). Returns ``(times, U)`` with ``U`` of
    shape ``(b, n_saved, n)``; equal to :func:`march` of each sample to round-off, and bit for bit
    independent of which other samples share the batch. ``sample_ids`` name the samples in
    errors (default: their rows). ``problem.last_reference_info`` holds the steps and, per
    sample, the total and the largest per-step number of Newton iterations."""
    p = problem.config
    m = int(substeps if substeps is not None else p["substeps"])
    J = int(grading if grading is not None else p["grading"])
    op = _Operator(problem)
    U = np.array(U0, dtype=float).reshape(-1, problem.n)
    b = U.shape[0]
    n_int = p["n_saved"] - 1
    dT = p["T"] / n_int
    n_start = 4
    saved = np.empty((b, n_int + 1, problem.n))
    saved[:, 0] = U
    newton = np.zeros(b, dtype=np.int64)
    newton_max = np.zeros(b, dtype=np.int64)
    steps = 0
    t = 0.0

    prev = {"U": None, "dt": None}

    def advance(U, dt, theta, t_new):
        guess = None
        if predictor and prev["U"] is not None:  # linear extrapolation of the last two states
            guess = U + (dt / prev["dt"]) * (U - prev["U"])
        U_new, it = op.step_batch(U, dt, theta, t_new, sample_ids, guess)
        prev["U"], prev["dt"] = U, dt
        U = U_new
        newton[:] += it
        np.maximum(newton_max, it, out=newton_max)
        return U

    for k in range(n_int):
        bounds = [0.0] + [dT / 2**j for j in range(J, -1, -1)] if k == 0 else [t, t + dT]
        for a, c in zip(bounds[:-1], bounds[1:]):
            dt = (c - a) / m
            done = 0
            if steps == 0:  # Rannacher start, as in march
                for i in range(2 * n_start):
                    U = advance(U, dt / 2, 1.0, a + (i + 1) * dt / 2)
                done = n_start
            for i in range(done, m):
                U = advance(U, dt, 0.5, a + (i + 1) * dt)
            steps += m
        t = (k + 1) * dT
        saved[:, k + 1] = U
    problem.last_reference_info = {"steps": steps, "newton_iterations": newton.tolist(),
                                   "newton_max_per_step": newton_max.tolist()}
    return np.linspace(0.0, p["T"], n_int + 1), saved


SPEC = DiffusionSorption1D()
