r"""Navier-Stokes in 2D, vorticity-streamfunction form, periodic unit square (second system of
Chalapathi et al., ICLR 2024).

PDE
---
On the unit torus ``[0, 1)^2``, for ``t in [0, T]`` (``T = 5``):

.. math::

    \omega_t + \mathbf u \cdot \nabla \omega = \nu \Delta \omega, \qquad
    -\Delta \psi = \omega, \qquad \mathbf u = (\psi_y, -\psi_x),

with viscosity ``nu = 1e-4`` and no forcing. ``psi`` is defined up to a constant: we fix its
mean to zero. ``omega`` must have zero mean for ``-lap psi = omega`` to be solvable; the initial
vorticity is made zero-mean and the scheme keeps it so (the discrete advection term conserves
``int omega`` exactly, see below).

Initial condition
-----------------
A periodic Gaussian random field with the periodic ("exp-sine-squared") covariance of length
scale ``l = 0.8`` (the paper's value) in each direction,
``k(x, y) = exp(-2 sin^2(pi (x1 - y1)) / l^2) exp(-2 sin^2(pi (x2 - y2)) / l^2)``, whose Fourier
coefficients are ``c_k = e^{-a} I_k(a)`` per direction (``a = 1 / l^2``, ``I_k`` the modified
Bessel function); modes ``|k| <= 16`` are kept (``c_16 < 1e-15``), the mean mode is dropped,
and the field is scaled by ``amplitude = 1``. Each sample is drawn as the Fourier coefficients,
so that the same continuous field can be evaluated on the mesh and on a spectral grid; the
input stored in data sets is its nodal interpolant on the P1 vorticity space.

Mesh and discretisation
-----------------------
The bundled ``meshes/periodic_square.msh`` (unstructured triangles with matching nodes on
opposite sides, from Gmsh periodic constraints; 3785 nodes, 7344 triangles, h ~ 1/56). Its
opposite boundary nodes are identified with scikit-fem's ``MeshTri1DG.periodic``, which keeps the
unstructured mesh (the point of femoe) and needs no extra constraint rows. Unknowns ``(omega,
psi)``, both P1 (``ElementTriP1() * ElementTriP1()``, 2 x 3672 DOFs). Weak form: for all
``(v, q)``

.. math::

    \int \omega_t v + (\mathbf u \cdot \nabla \omega) v + \nu \nabla\omega\cdot\nabla v \, dx = 0,
    \qquad
    \int \nabla \psi \cdot \nabla q + \alpha \psi q - \omega q \, dx = 0 .

The small ``alpha = 1e-6`` term fixes the mean of ``psi`` (to ``mean(omega) / alpha = 0``) without
a global constraint row, which a pointwise integrand cannot express; on every other Fourier
mode it changes ``psi`` by a relative ``alpha / (4 pi^2 |k|^2) <= 2.6e-8``.

No stabilisation: ``u = curl psi`` is exactly divergence-free element by element with continuous
normal component (it is the rotated gradient of a continuous P1 function), so the Galerkin
advection term is skew-symmetric: the semi-discrete scheme conserves ``int omega``, the
enstrophy ``int omega^2 / 2`` and the kinetic energy ``int |grad psi|^2 / 2`` exactly when ``nu = 0``,
and dissipates both at the physical rate otherwise. SUPG would add numerical dissipation
that the spectral comparison would have to absorb; the smooth initial data (modes ``|k| <= ~4``
carry almost all the energy) and the short horizon keep the flow resolved on this mesh.

The returned :class:`~femoe.problem.Problem` has storage ``omega v`` and the theta scheme with
``theta = 0.5`` (the ``psi`` rows are algebraic and hold at every level).

Reference solution
------------------
The method-of-lines system of the same Galerkin discretisation, ``M omega' = -N(psi) omega -
nu K omega`` with ``(K + alpha M) psi = M omega``, integrated by the three-stage strong-stability
preserving Runge-Kutta method (SSP-RK3) with the consistent mass matrix (factorised once),
at ``cfl = 0.25`` (step ``cfl * h_min / max|u_0|``, rounded so that the 64 saved intervals are
hit exactly). RK3 is mildly dissipative for skew-symmetric operators, so energy and enstrophy
never grow. Saved: 65 levels ``t = 0, 5/64, ..., 5`` of the full ``(omega, psi)`` DOF vector.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import skfem as fe
from scipy.spatial import cKDTree
from scipy.special import ive

from femoe.assembly.fields import Field
from femoe.errors import MeshError, NonFiniteError
from femoe.helpers import dot, grad
from femoe.mesh import read_mesh
from femoe.meshes import MESH_DIR
from femoe.problem import Problem
from femoe.problems._base import Param, ProblemSpec, nonnegative, positive, positive_int

log = logging.getLogger(__name__)

MAX_MODE = 16
_LIFTS = ("none", "increment", "paper")


def periodic_mesh(mesh: fe.MeshTri1, tol: float = 1e-8) -> tuple[fe.MeshTri1DG, np.ndarray]:
    """Identify opposite sides of a unit-square triangle mesh.

    Returns the periodic mesh and ``orig2dof``: for each vertex of ``mesh``, its P1 DOF on the
    periodic mesh.
    """
    x = mesh.p
    lo, hi = x.min(axis=1), x.max(axis=1)
    if not (np.allclose(lo, 0.0, atol=tol) and np.allclose(hi, 1.0, atol=tol)):
        raise MeshError(f"a periodic mesh must span the unit square; its bounding box is {lo} .. {hi}")
    wrapped = np.where(x > 1.0 - tol, x - 1.0, x)
    keep = np.nonzero((x[0] < 1.0 - tol) & (x[1] < 1.0 - tol))[0]
    tree = cKDTree(wrapped[:, keep].T)
    drop = np.setdiff1d(np.arange(mesh.nvertices), keep)
    dist, idx = tree.query(wrapped[:, drop].T)
    if drop.size and dist.max() > 1e-6:
        raise MeshError("the mesh has no matching nodes on opposite sides (max mismatch "
                        f"{dist.max():.2e}); generate it with periodic constraints")
    skfem_log = logging.getLogger("skfem.mesh.mesh")
    level = skfem_log.level
    skfem_log.setLevel(logging.ERROR)  # the DG mesh's non-contiguous doflocs warning is harmless
    try:
        pm = fe.MeshTri1DG.periodic(mesh, drop, keep[idx])
    finally:
        skfem_log.setLevel(level)
    basis = fe.Basis(pm, fe.ElementTriP1())
    orig2dof = np.empty(mesh.nvertices, dtype=np.int64)
    orig2dof[mesh.t] = basis.element_dofs
    return pm, orig2dof


def structured_square(n: int) -> fe.MeshTri1:
    """The unit square split into ``n x n`` squares, each cut into two triangles (scikit-fem's
    ``MeshTri.init_tensor``); opposite sides have matching nodes, as :func:`periodic_mesh`
    requires. ``n = 32`` gives 1024 periodic nodes (2048 DOFs of ``(omega, psi)``)."""
    if n < 2:
        raise MeshError(f"a periodic structured mesh needs grid >= 2; got {n}")
    x = np.linspace(0.0, 1.0, n + 1)
    return fe.MeshTri.init_tensor(x, x)


def grf_modes(length: float) -> tuple[np.ndarray, np.ndarray]:
    """Wave vectors ``k`` (``(m, 2)``, ``|k_i| <= MAX_MODE``, mean mode excluded) and their
    variances ``c_k1 c_k2`` for the periodic covariance of length scale ``length``."""
    a = 1.0 / length**2
    ks = np.arange(-MAX_MODE, MAX_MODE + 1)
    c1 = ive(np.abs(ks), a)
    k1, k2 = np.meshgrid(ks, ks, indexing="ij")
    var = np.outer(c1, c1)
    mask = ~((k1 == 0) & (k2 == 0))
    return np.stack([k1[mask], k2[mask]], axis=1).astype(float), var[mask]


def grf_coefficients(rng: np.random.Generator, n: int, length: float, amplitude: float) -> np.ndarray:
    """``n`` draws of cosine/sine coefficients ``(n, 2, m)`` of the vorticity field."""
    _, var = grf_modes(length)
    return amplitude * np.sqrt(var)[None, None, :] * rng.standard_normal((n, 2, var.size))


def evaluate_field(coeffs: np.ndarray, x: np.ndarray, length: float) -> np.ndarray:
    """The field ``sum_k a_k cos(2 pi k.x) + b_k sin(2 pi k.x)`` at points ``x`` ``(2, p)``;
    ``coeffs`` ``(n, 2, m)`` -> ``(n, p)``."""
    k, _ = grf_modes(length)
    arg = 2 * np.pi * k @ x  # (m, p)
    return coeffs[:, 0] @ np.cos(arg) + coeffs[:, 1] @ np.sin(arg)


class NavierStokes2D(ProblemSpec):
    """Decaying 2D turbulence on the periodic unit square (see the module docstring)."""

    name = "navier_stokes_2d"
    steady = False
    element = "ElementTriP1 * ElementTriP1 (omega, psi) on MeshTri1DG.periodic"
    mesh_file = "meshes/periodic_square.msh"
    description = "vorticity-streamfunction Navier-Stokes, periodic square, nu = 1e-4, GRF initial vorticity"
    params = {
        "nu": Param(1e-4, nonnegative, ">= 0", "kinematic viscosity"),
        "T": Param(5.0, positive, "> 0", "final time"),
        "n_steps": Param(64, positive_int, "an integer >= 1", "saved intervals (n_steps + 1 levels)", int),
        "length_scale": Param(0.8, positive, "> 0", "GRF length scale"),
        "amplitude": Param(1.0, positive, "> 0", "GRF amplitude"),
        "alpha": Param(1e-6, positive, "> 0", "psi mean-fixing term (small)"),
        "cfl": Param(0.25, lambda c: 0 < c <= 0.5, "in (0, 0.5]", "SSP-RK3 Courant number"),
        "theta": Param(0.5, lambda t: 0 <= t <= 1, "in [0, 1]", "theta of the returned Problem"),
        "mesh": Param("", None, "", "mesh file (default: the bundled periodic square)", str),
        "grid": Param(0, lambda g: int(g) == g and g >= 0, "an integer >= 0", "> 0: a structured grid x grid "
                      "periodic triangle mesh instead of the mesh file (CPU-sized runs, super-resolution tests)",
                      int),
        "lift": Param("none", lambda s: s in _LIFTS, f"one of {_LIFTS}", "the unknown of the returned Problem: "
                      "'none' the state u; 'increment' z = u - u0; 'paper' z with u = u0 + (t / T) z, the "
                      "paper's construction (initial condition exact by construction); u0 is the parameter "
                      "'initial_state'", str),
    }

    def _build(self, params: dict[str, Any]) -> Problem:
        if params["grid"] > 0:
            mesh = structured_square(params["grid"])
        else:
            mesh = read_mesh(params["mesh"] or str(MESH_DIR / "periodic_square.msh"))
        pm, orig2dof = periodic_mesh(mesh)
        basis = fe.Basis(pm, fe.ElementTriP1() * fe.ElementTriP1())
        nu, alpha = params["nu"], params["alpha"]

        def vorticity(om, ps, v, q, w):
            gp, go = grad(ps), grad(om)
            advection = gp[1] * go[0] - gp[0] * go[1]  # u . grad omega, u = (psi_y, -psi_x)
            return advection * v + nu * dot(go, grad(v)) + dot(gp, grad(q)) + alpha * ps * q - om * q

        def storage(om, ps, v, q, w):
            return om * v

        lift, T = params["lift"], params["T"]
        if lift == "none":
            problem = Problem(basis, vorticity, storage=storage, theta=params["theta"], name=self.name)
        else:
            # the same scheme for u = u0 + s(t) z, s = 1 ('increment') or t / T ('paper'): the rows of
            # the state u written in the unknown z; at t = 0 (s = 0) u = u0 whatever z is
            def scale(w):
                return 1.0 if lift == "increment" else w.t / T

            def shifted(f0, f, s):  # the field f0 + s f (value and gradient)
                return Field(f0.value + s * f.value, f0.grad + s * f.grad)

            def vorticity_lifted(om, ps, v, q, w):
                om0, ps0 = w.initial_state
                s = scale(w)
                return vorticity(shifted(om0, om, s), shifted(ps0, ps, s), v, q, w)

            def storage_lifted(om, ps, v, q, w):
                return scale(w) * om * v

            problem = Problem(basis, vorticity_lifted, storage=storage_lifted, theta=params["theta"],
                              coefficients={"initial_state": "nodal"}, name=self.name)
        problem.orig_mesh = mesh
        problem.orig2dof = orig2dof
        return problem

    # ------------------------------------------------------------------ lifted unknowns
    def lifted(self, problem: Problem) -> bool:
        """Whether ``problem``'s unknown is ``z`` of ``u = u0 + s(t) z`` (parameter ``lift``)."""
        return problem.config.get("lift", "none") != "none"

    def lift_scale(self, problem: Problem, times) -> np.ndarray:
        """``s(t)`` of ``u = u0 + s(t) z`` at ``times``."""
        t = np.asarray(times, dtype=float)
        return np.ones_like(t) if problem.config["lift"] == "increment" else t / problem.config["T"]

    def state_from_lifted(self, problem: Problem, z, u0, times):
        """The state ``u = u0 + s(t) z`` of a lifted trajectory ``z`` ``(batch, levels, n)`` at
        ``times`` (levels); ``u0`` ``(batch, n)``. Torch or numpy."""
        s = self.lift_scale(problem, times)
        if hasattr(z, "new_tensor"):
            s = z.new_tensor(s)
        return u0[:, None, :] + s[None, :, None] * z

    # ------------------------------------------------------------------ inputs
    def sample_coefficients(self, rng: np.random.Generator, n: int, problem: Problem | None = None) -> np.ndarray:
        p = problem.config if problem is not None else self.defaults
        return grf_coefficients(rng, n, p["length_scale"], p["amplitude"])

    def sample_inputs(self, rng: np.random.Generator, n: int, problem: Problem | None = None) -> np.ndarray:
        """``n`` initial vorticities on the P1 vorticity DOFs, shape ``(n, n_vertices)``."""
        problem = problem if problem is not None else self.build()
        coeffs = self.sample_coefficients(rng, n, problem)
        iw = problem.basis.split_indices()[0]
        return evaluate_field(coeffs, problem.doflocs[:, iw], problem.config["length_scale"])

    def reference(self, problem: Problem, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return VorticitySolver(problem).run(np.asarray(sample, dtype=float))

    def initial_state(self, problem: Problem, inputs: np.ndarray) -> np.ndarray:
        """(omega, psi) DOF vectors from initial vorticities: the mean removed and psi solved, as
        the reference does at t = 0. Called by every training step (``Task.layer_args``): the
        solver (assembly, two LU factorisations) is built once per problem."""
        solver = _solver(problem)
        out = []
        for omega in np.atleast_2d(inputs):
            omega = np.asarray(omega, dtype=float) - (solver.ones_M @ omega) / solver.ones_M.sum()
            out.append(solver.assemble(omega))
        return np.stack(out)

    # ------------------------------------------------------------------ the streamfunction's rows
    def algebraic_fields(self, problem: Problem):
        """The streamfunction as a function of the vorticity, ``(K + alpha M) psi = M omega``: its
        rows hold at every level and do not involve time, so a network need not span ``psi``
        (``network.solve_algebraic``). For the lifted unknown ``z`` of ``u = u0 + s(t) z`` the same
        map holds for ``z``, because ``u0`` satisfies it (:meth:`initial_state` solves ``psi0``). The
        vorticity is kept at zero mean (``solvability``), as the scheme keeps it: ``psi`` then has
        zero mean too, instead of ``mean(omega) / alpha``."""
        from femoe.layers import AlgebraicFields

        solver = _solver(problem)
        return AlgebraicFields(solver.iw, solver.ip, solver.K + problem.config["alpha"] * solver.M, solver.M,
                               problem.n, solvability=solver.ones_M, gauge=solver.ones_M)

    def tendencies(self, problem: Problem, states: np.ndarray, m: int) -> np.ndarray:
        """``m`` Krylov tendencies at each state ``(batch, n)`` (see :class:`ProblemSpec`): with
        ``omega`` the state's vorticity, ``f_1 = M^{-1} (-N(psi(omega)) omega - nu K omega)``
        (:meth:`VorticitySolver.rhs`), ``f_{k+1} = f'(omega) f_k``, each with its streamfunction,
        ``(batch, m, n)``. ``f`` is quadratic in ``omega``, so the central difference
        ``(f(omega + e g) - f(omega - e g)) / (2 e)`` is its exact Jacobian-vector product for any
        ``e`` (``e`` scales ``g`` to ``omega``'s size, against round-off). Each ``f_k`` is scaled to
        the norm of ``omega``."""
        solver = _solver(problem)
        states = np.atleast_2d(np.asarray(states, dtype=float))
        out = np.zeros((states.shape[0], m, problem.n))
        for b, u in enumerate(states):
            om = u[solver.iw]
            size = max(float(np.linalg.norm(om)), 1e-300)
            g = solver.rhs(om)
            for k in range(m):
                if k:
                    e = size / max(float(np.linalg.norm(g)), 1e-300)
                    g = (solver.rhs(om + e * g) - solver.rhs(om - e * g)) / (2 * e)
                norm = float(np.linalg.norm(g))
                if norm == 0.0:
                    break  # a steady state: no tendency, the rest stay zero
                g = g * (size / norm)
                out[b, k] = solver.assemble(g)
        return out

    # ------------------------------------------------------------------ graph-network input
    #: channels of :meth:`node_features`
    node_channels = 4

    def node_features(self, problem: Problem, inputs: np.ndarray) -> np.ndarray:
        """What a graph network reads at each vertex, ``(batch, vertices, 4)``: the initial
        vorticity (mean removed), its streamfunction and velocity ``(psi_y, -psi_x)`` (element
        gradients averaged to the vertices, area-weighted). The advection of the vorticity,
        ``u . grad omega``, is then a local function of what each node and its neighbours see;
        ``psi`` solves a global problem that a few message-passing layers could not. The
        streamfunction is scaled by 40 and the velocity by 15 so that, for the default random
        field (length scale 0.8, amplitude 1), every channel is O(1)."""
        solver = _solver(problem)
        U = self.initial_state(problem, inputs)
        ed, w = solver.ed.ravel(), np.tile(solver.area, 3)
        weight = np.bincount(ed, w, minlength=solver.n1)
        out = []
        for u in U:
            g = solver.gradients(u[solver.ip])  # (2, nel)
            vel = [np.bincount(ed, w * np.tile(c, 3), minlength=solver.n1) / weight for c in (g[1], -g[0])]
            out.append(np.stack([u[solver.iw], 40.0 * u[solver.ip], 15.0 * vel[0], 15.0 * vel[1]], axis=1))
        return np.stack(out)

    # ------------------------------------------------------------------ output
    def points(self, problem: Problem) -> np.ndarray:
        return np.ascontiguousarray(problem.doflocs.T)

    def output_mesh(self, problem: Problem):
        return problem.orig_mesh

    def output_fields(self, problem: Problem, u: np.ndarray) -> dict[str, np.ndarray]:
        iw, ip = problem.basis.split_indices()
        u = np.asarray(u)
        return {"vorticity": u[..., iw][..., problem.orig2dof],
                "streamfunction": u[..., ip][..., problem.orig2dof]}


class VorticitySolver:
    """Method-of-lines solver of the Galerkin vorticity-streamfunction system (SSP-RK3)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        p = self.p = problem.config
        self.iw, self.ip = problem.basis.split_indices()
        b1 = fe.Basis(problem.mesh, fe.ElementTriP1())
        self.n1 = b1.N
        self.ed = np.asarray(b1.element_dofs)  # (3, nel)
        self.dphi = np.stack([np.asarray(b1.basis[a][0].grad)[:, :, 0] for a in range(3)])  # (3, 2, nel)
        self.area = np.asarray(b1.dx).sum(axis=1)
        M = fe.BilinearForm(lambda u, v, w: u * v).assemble(b1).tocsc()
        K = fe.BilinearForm(lambda u, v, w: dot(u.grad, v.grad)).assemble(b1).tocsc()
        self.M, self.K = M, K
        self.M_lu = spla.splu(M)
        self.S_lu = spla.splu((K + p["alpha"] * M).tocsc())
        self.ones_M = np.asarray(M.sum(axis=0)).ravel()
        # smallest edge length of the mesh (element vertex coordinates; periodic DG mesh)
        xy = _element_coords(b1)
        self.h_min = float(min(np.linalg.norm(xy[:, :, i] - xy[:, :, (i + 1) % 3], axis=0).min()
                               for i in range(3)))

    def psi(self, omega: np.ndarray) -> np.ndarray:
        return self.S_lu.solve(self.M @ omega)

    def gradients(self, f: np.ndarray) -> np.ndarray:
        """Element-wise gradient of a P1 field, ``(2, nel)``."""
        return np.einsum("aie,ae->ie", self.dphi, f[self.ed])

    def rhs(self, omega: np.ndarray) -> np.ndarray:
        """``M^{-1} (-N(psi) omega - nu K omega)``."""
        gp, go = self.gradients(self.psi(omega)), self.gradients(omega)
        adv = (gp[1] * go[0] - gp[0] * go[1]) * self.area / 3.0  # int (u . grad omega) phi_i, P1
        r = np.bincount(self.ed.ravel(), np.tile(adv, 3), minlength=self.n1)
        return -self.M_lu.solve(r + self.p["nu"] * (self.K @ omega))

    def max_velocity(self, omega: np.ndarray) -> float:
        g = self.gradients(self.psi(omega))
        return float(np.sqrt((g**2).sum(0)).max())

    def assemble(self, omega: np.ndarray) -> np.ndarray:
        u = np.empty(self.problem.n)
        u[self.iw] = omega
        u[self.ip] = self.psi(omega)
        return u

    def run(self, omega0: np.ndarray, substeps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        omega = np.array(omega0, dtype=float).reshape(self.n1)
        omega -= (self.ones_M @ omega) / self.ones_M.sum()  # zero mean in the M inner product
        dT = p["T"] / p["n_steps"]
        if substeps is None:
            umax = max(self.max_velocity(omega), 1e-12)
            substeps = max(1, math.ceil(dT / (p["cfl"] * self.h_min / umax)))
        dt = dT / substeps
        saved = [self.assemble(omega)]
        for _ in range(p["n_steps"]):
            for _ in range(substeps):
                w1 = omega + dt * self.rhs(omega)
                w2 = 0.75 * omega + 0.25 * (w1 + dt * self.rhs(w1))
                omega = omega / 3.0 + 2.0 / 3.0 * (w2 + dt * self.rhs(w2))
            if not np.all(np.isfinite(omega)):
                raise NonFiniteError("navier_stokes_2d: the vorticity became non-finite; lower cfl")
            saved.append(self.assemble(omega))
        self.problem.last_reference_info = {"substeps": substeps, "dt": dt, "steps": substeps * p["n_steps"]}
        return np.linspace(0.0, p["T"], p["n_steps"] + 1), np.stack(saved)


def _solver(problem: Problem) -> VorticitySolver:
    """``problem``'s :class:`VorticitySolver` (assembly and two LU factorisations), built once."""
    solver = problem.__dict__.get("_vorticity_solver")
    if solver is None:
        solver = problem.__dict__["_vorticity_solver"] = VorticitySolver(problem)
    return solver


def _element_coords(basis) -> np.ndarray:
    """Vertex coordinates of every element, ``(2, nel, 3)`` (valid on periodic DG meshes)."""
    return np.asarray(basis.mapping.F(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])))


def energy_enstrophy(problem: Problem, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kinetic energy ``int |grad psi|^2 / 2`` and enstrophy ``int omega^2 / 2`` of each level of
    ``U`` ``(T, n)``."""
    s = VorticitySolver(problem)
    U = np.atleast_2d(U)
    om, ps = U[:, s.iw], U[:, s.ip]
    E = 0.5 * np.einsum("ti,ti->t", ps, (s.K @ ps.T).T)
    Z = 0.5 * np.einsum("ti,ti->t", om, (s.M @ om.T).T)
    return E, Z


SPEC = NavierStokes2D()
