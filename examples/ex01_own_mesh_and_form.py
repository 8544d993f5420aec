"""Your own mesh file and weak form, with the hard-constraint layer after your own network.

PDE on the bundled plate with two holes (``meshes/plate_with_holes.msh``, tags from the file's
physical groups):

    -div((1 + u^2) grad u) = f                  in the plate, f = 10
    u = 0                                       on "outer"
    (1 + u^2) du/dn + alpha u = 0               on "hole_1" (Robin, alpha = 5)
    du/dn = 0                                   on "hole_2"

Weak form: find u with int (1 + u^2) grad u . grad v - f v dx + int_{hole_1} alpha u v ds = 0.
A plain MLP maps the coordinates to N basis fields ``B``; :class:`femoe.layers.HardConstraint`
(PI-HC) picks ``u = B w*`` with ``w*`` minimising the weak-form residual, and a few dozen Adam
steps on the physics-only loss ``||R(u)||^2`` (no reference data) improve the basis. The result
is compared with femoe's Newton reference solve.

    python examples/ex01_own_mesh_and_form.py
"""

from __future__ import annotations

import skfem as fe
import torch

import femoe
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.meshes import MESH_DIR

MESH = MESH_DIR / "plate_with_holes.msh"  # the bundled meshes ship with femoe (femoe.meshes)


def residual(u, v, w):  # scikit-fem's (u, v, w) style, linear in the test function v
    return dot((1 + u**2) * grad(u), grad(v)) - w.f * v


def robin(u, v, w):  # facet term on "hole_1"
    return w.alpha * u * v


def main(steps: int = 60, n_basis: int = 32, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    mesh = femoe.read_mesh(MESH)
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = femoe.Problem(basis, residual, facets={"hole_1": robin}, dirichlet={"outer": 0.0},
                            defaults={"f": 10.0, "alpha": 5.0}, name="nonlinear-plate")
    u_ref, _ = femoe.solve(problem)  # reference: Newton on the same discrete weak form
    u_ref = torch.as_tensor(u_ref)

    x = torch.as_tensor(basis.doflocs.T)  # (n, 2) DOF coordinates, the network's input
    # "outer" is the rectangle [0, 2] x [0, 1]: this factor makes every basis field vanish there,
    # so the Dirichlet rows hold by construction and the N weights go to the PDE rows
    cutoff = (x[:, 0] * (2 - x[:, 0]) * x[:, 1] * (1 - x[:, 1]))[:, None]
    net = torch.nn.Sequential(torch.nn.Linear(2, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128),
                              torch.nn.Tanh(), torch.nn.Linear(128, n_basis)).double()
    layer = HardConstraint(problem)  # PI-HC: one Levenberg-Marquardt solve per sample
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def loss_of():
        u, info = layer(cutoff * net(x))  # B: (n, N) -> u = B w*: (n,)
        return problem.residual(u).square().sum(), u, info

    with torch.no_grad():
        loss0 = float(loss_of()[0])
    for step in range(steps):
        opt.zero_grad()
        loss, u, info = loss_of()
        loss.backward()  # implicit function theorem through w*, then into the MLP
        opt.step()
    with torch.no_grad():
        loss, u, info = loss_of()
    rel_l2 = float(torch.linalg.norm(u - u_ref) / torch.linalg.norm(u_ref))
    out = {"rel_l2": rel_l2, "residual": float(loss.sqrt()), "residual_initial": loss0**0.5,
           "lm_converged": info.all_converged, "n_dofs": problem.n}
    print(f"{problem.n} DOFs, N = {n_basis}: weak-form residual {out['residual_initial']:.3e} -> "
          f"{out['residual']:.3e} after {steps} Adam steps; relative L2 error vs Newton {100 * rel_l2:.2f} %")
    return out


if __name__ == "__main__":
    main()
