r"""The DFG 2D-1 benchmark (Schaefer & Turek 1996): steady flow past a cylinder at Re = 20.

PDE (steady incompressible Navier-Stokes, density 1):

    -nu lap u + (u . grad) u + grad p = 0,   div u = 0   in  Omega = [0, 2.2] x [0, 0.41] \ B,

B the disk of radius 0.05 centred at (0.2, 0.2); u = (4 U_m y (H - y) / H^2, 0) on the inlet
x = 0 (H = 0.41, U_m = 0.3), u = 0 on the walls y = 0, H and on the cylinder, and the natural
"do-nothing" condition nu du/dn - p n = 0 on the outlet x = 2.2; nu = 1e-3, so that
Re = U_mean D / nu = 20 with U_mean = 2 U_m / 3 = 0.2 and D = 0.1.

Discretisation: Taylor-Hood P2/P1 on the bundled second-order Gmsh mesh
``meshes/dfg_cylinder.msh`` (named groups inlet/outlet/walls/cylinder; the cylinder is curved),
Newton's method through :func:`femoe.solve`. Reported, against the published values
c_D = 5.57953523384, c_L = 0.010618948146, dp = 0.11752016697:

* drag and lift coefficients ``c = 2 F / (U_mean^2 D)`` from the reaction of the residual on the
  cylinder (the volume formulation; :func:`femoe.boundary.reaction`);
* the pressure difference ``p(0.15, 0.2) - p(0.25, 0.2)``;
* d c_D / d U_m by the adjoint of the differentiable Newton solve
  (:func:`femoe.layers.nonlinear_solve`), against central finite differences;
* the same Newton iteration written in plain scikit-fem + SciPy (``condense``, ``spsolve``), in
  the same run, for a time ratio and a cross-check of the solution;
* a VTU file with the velocity and the pressure.

On the bundled mesh: c_D 0.015 %, c_L 0.50 %, dp 0.10 % off, 5 Newton iterations. Use a curved
(second-order) mesh: first-order triangles of the same size make the cylinder a polygon and
put c_L 2.4 % off (h = 0.004 on the cylinder brings it to 0.3 %).

    python examples/ex04_dfg_cylinder.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as spla
import skfem as fe
import torch

import femoe
from femoe.boundary import reaction
from femoe.helpers import ddot, div, dot, grad, mul
from femoe.meshes import MESH_DIR

ROOT = Path(__file__).resolve().parents[1]
MESH = MESH_DIR / "dfg_cylinder.msh"
H, D, NU, U_M = 0.41, 0.1, 1e-3, 0.3
U_MEAN = 2 * U_M / 3
REFERENCE = {"c_D": 5.57953523384, "c_L": 0.010618948146, "dp": 0.11752016697}


def navier_stokes(u, p, v, q, w):
    return w.nu * ddot(grad(u), grad(v)) + dot(mul(grad(u), u), v) - div(v) * p - q * div(u)


def profile(x: np.ndarray) -> np.ndarray:
    """Inflow shape 4 y (H - y) / H^2 (times U_m), one row per velocity component."""
    return np.stack([4 * x[1] * (H - x[1]) / H**2, 0 * x[1]])


def build(mesh_path: str | Path = MESH) -> femoe.Problem:
    mesh = femoe.read_mesh(mesh_path)
    basis = fe.Basis(mesh, fe.ElementComposite(fe.ElementVector(fe.ElementTriP2()), fe.ElementTriP1()))
    return femoe.Problem(
        basis, navier_stokes, fields=("u", "p"),
        # the inflow is a parameter (B, m): U_m times the profile, so that c_D can be
        # differentiated with respect to U_m; the pressure is fixed nowhere
        dirichlet={"inlet": {"u": "inflow"}, "walls": {"u": 0.0}, "cylinder": {"u": 0.0}},
        defaults={"nu": NU}, name="dfg-2d-1")


def inflow(problem: femoe.Problem, amplitude) -> torch.Tensor:
    """Per-DOF inflow values ``(1, m)`` for amplitude ``U_m`` (a float or a 0-d tensor)."""
    dofs = problem.dirichlet_dofs_of("inlet", "u")  # x components, then y components
    half = dofs.size // 2
    shape = np.concatenate([profile(problem.doflocs[:, dofs[:half]])[0], np.zeros(dofs.size - half)])
    return (torch.as_tensor(amplitude, dtype=torch.float64) * torch.as_tensor(shape)).reshape(1, -1)


def coefficients(problem: femoe.Problem, u) -> dict:
    """c_D, c_L (volume formulation) and dp of a solution ``u`` (numpy or torch, no batch)."""
    ut = torch.as_tensor(u)
    # the reaction is the force of the wall on the fluid; the fluid pushes the cylinder with -r
    force = -reaction(problem, ut, "cylinder", "u", {"inflow": inflow(problem, U_M)})
    scale = 2.0 / (U_MEAN**2 * D)
    # the two points lie on the cylinder (front and back); P1 pressure is linear on the
    # straight-sided triangles of the corner nodes, where scikit-fem's point finder works
    pb = problem.field_basis("p")
    p = problem.split(np.asarray(ut.detach()))["p"][pb.nodal_dofs[0]]
    linear = fe.Basis(fe.MeshTri(problem.mesh.p, problem.mesh.t), fe.ElementTriP1())
    probe = linear.probes(np.array([[0.15, 0.25], [0.2, 0.2]])) @ p
    return {"c_D": scale * force[..., 0], "c_L": scale * force[..., 1], "dp": float(probe[0] - probe[1])}


def skfem_newton(problem: femoe.Problem, tol: float = 1e-10, maxiter: int = 20) -> tuple[np.ndarray, int, float]:
    """The same Newton iteration in plain scikit-fem + SciPy (no femoe in the loop)."""
    basis = problem.basis

    @fe.BilinearForm
    def jac(u, p, v, q, w):
        z = w.prev
        return (NU * ddot(grad(u), grad(v)) + dot(mul(grad(u), z), v) + dot(mul(grad(z), u), v)
                - div(v) * p - q * div(u))

    @fe.LinearForm
    def res(v, q, w):
        z, r = w.prev, w.prev_p
        return NU * ddot(grad(z), grad(v)) + dot(mul(grad(z), z), v) - div(v) * r - q * div(z)

    t0 = time.perf_counter()
    D_ = problem.dirichlet_dofs
    x = np.zeros(basis.N)
    x[D_] = problem.dirichlet_values({"inflow": inflow(problem, U_M)})[0].numpy()
    free = np.setdiff1d(np.arange(basis.N), D_)
    it = 0
    for it in range(1, maxiter + 1):
        (zu, zb), (pu, pbasis) = basis.split(x)
        fields = {"prev": zb.interpolate(zu), "prev_p": pbasis.interpolate(pu)}
        J = fe.asm(jac, basis, **fields)
        R = fe.asm(res, basis, **fields)
        if np.linalg.norm(R[free]) < tol:
            break
        dx = np.zeros(basis.N)
        dx[free] = spla.spsolve(J[free][:, free].tocsc(), -R[free])
        x += dx
    return x, it - 1, time.perf_counter() - t0


def main(mesh_path: str | Path = MESH, out: str | Path | None = None, check_gradient: bool = True,
         compare_skfem: bool = True) -> dict:
    problem = build(mesh_path)
    params = {"inflow": inflow(problem, U_M)}
    t0 = time.perf_counter()
    u, info = femoe.solve(problem, params, atol=1e-10, rtol=1e-12)
    seconds = time.perf_counter() - t0
    c = coefficients(problem, u)
    result = {"n_dofs": problem.n, "newton_iterations": info.iterations, "seconds": seconds,
              **{k: float(v) for k, v in c.items()},
              **{f"err_{k}": abs(float(c[k]) - REFERENCE[k]) / REFERENCE[k] for k in REFERENCE}}

    if compare_skfem:
        x, its, sk_seconds = skfem_newton(problem)
        result.update(skfem_seconds=sk_seconds, skfem_iterations=its, time_ratio=seconds / sk_seconds,
                      max_diff_skfem=float(np.abs(x - u).max()))

    if check_gradient:
        from femoe.layers import nonlinear_solve

        amp = torch.tensor(U_M, dtype=torch.float64, requires_grad=True)
        ut = nonlinear_solve(problem, {"inflow": inflow(problem, amp)}, torch.as_tensor(u).reshape(1, -1),
                             atol=1e-10, rtol=0.0)
        cd = coefficients(problem, ut[0])["c_D"]
        (grad_adjoint,) = torch.autograd.grad(cd, amp)
        h = 1e-4
        cds = []
        for a in (U_M + h, U_M - h):
            ua, _ = femoe.solve(problem, {"inflow": inflow(problem, a)}, u0=u, atol=1e-11, rtol=0.0)
            cds.append(float(coefficients(problem, ua)["c_D"]))
        fd = (cds[0] - cds[1]) / (2 * h)
        result.update(dcD_dUm_adjoint=float(grad_adjoint), dcD_dUm_fd=fd,
                      gradient_rel_err=abs(float(grad_adjoint) - fd) / abs(fd))

    if out is not None:
        mesh = problem.mesh
        ub = problem.field_basis("u")
        parts = problem.split(u)
        vel = np.stack([parts["u"][ub.nodal_dofs[0]], parts["u"][ub.nodal_dofs[1]]], axis=1)
        pres = parts["p"][problem.field_basis("p").nodal_dofs[0]]
        result["vtu"] = str(femoe.write_fields(out, mesh, {"velocity": vel, "pressure": pres}))
    return result


if __name__ == "__main__":
    r = main(out=ROOT / "results" / "ex04_dfg_cylinder.vtu")
    for k in ("c_D", "c_L", "dp"):
        print(f"{k:4s} = {r[k]:.6f}   reference {REFERENCE[k]:.6f}   error {100 * r[f'err_{k}']:.3f} %")
    print(f"Newton: {r['newton_iterations']} iterations, {r['seconds']:.2f} s through femoe; "
          f"plain scikit-fem/SciPy {r['skfem_seconds']:.2f} s ({r['skfem_iterations']} iterations), "
          f"ratio {r['time_ratio']:.2f}; max |difference| {r['max_diff_skfem']:.1e}")
    print(f"d c_D / d U_m: adjoint {r['dcD_dUm_adjoint']:.8f}, finite differences {r['dcD_dUm_fd']:.8f} "
          f"(relative difference {r['gradient_rel_err']:.1e})")
    print(f"wrote {r['vtu']}")
