"""Adding femoe to an existing scikit-fem script.

PDE: -lap u = 1 on the unit square, u = 0 on the boundary (scikit-fem's first example).

The first block is the scikit-fem script as it is usually written. The second adds femoe in a
few lines: the same ``laplace`` / ``unit_load`` forms passed as they are to
:class:`femoe.Problem`, a small network giving a field ``U_hat``, and the patch-mode layer
:class:`femoe.experts.PatchConstraint`, which cuts the mesh into 4 experts, solves the weak form
exactly on each patch interior with the network's values on the interfaces, and so leaves
residual only on the interface rows. A few Adam steps on that residual (physics only, no data)
teach the network the interface; the result is compared with scikit-fem's solution. The network's
field is multiplied by ``x (1 - x) y (1 - y)`` so that it starts at the right scale and vanishes
on the boundary (the layer sets the Dirichlet values anyway).

    python examples/ex02_existing_scikit_fem_script.py
"""

from __future__ import annotations

import numpy as np
import skfem as fe
import torch
from skfem.models.poisson import laplace, unit_load

import femoe
from femoe.experts import PatchConstraint


def main(steps: int = 40, experts: int = 4, seed: int = 0) -> dict:
    # --- the scikit-fem script ------------------------------------------------------------
    mesh = fe.MeshTri().refined(4).with_defaults()  # tags "left", "right", "top", "bottom"
    basis = fe.Basis(mesh, fe.ElementTriP1())
    A = fe.asm(laplace, basis)
    b = fe.asm(unit_load, basis)
    x_skfem = fe.solve(*fe.condense(A, b, D=mesh.boundary_nodes()))

    # --- femoe: the same forms, a network, a constraint layer -----------------------------
    torch.manual_seed(seed)
    problem = femoe.Problem(basis, bilinear=laplace, linear=unit_load,
                            dirichlet={tag: 0.0 for tag in ("left", "right", "top", "bottom")})
    layer = PatchConstraint(problem, experts, partition="rcb")
    points = torch.as_tensor(basis.doflocs.T)  # (n, 2)
    cutoff = (points[:, 0] * (1 - points[:, 0]) * points[:, 1] * (1 - points[:, 1]))[:, None]
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, 1)).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.1 ** (1 / steps))  # 1e-2 -> 1e-3
    for _ in range(steps):
        opt.zero_grad()
        u, info = layer((cutoff * net(points)).T)  # U_hat (1, n) -> u (1, n), interiors solved
        loss = problem.residual(u).square().sum()  # only interface rows are left to train
        loss.backward()  # one adjoint solve per step, reusing the forward factorisation
        opt.step()
        sched.step()
    with torch.no_grad():
        u, info = layer((cutoff * net(points)).T)
    u = u[0].numpy()
    rel_l2 = float(np.linalg.norm(u - x_skfem) / np.linalg.norm(x_skfem))
    out = {"rel_l2": rel_l2, "residual_interior": float(info.residual_interior[0]),
           "residual_interface": float(info.residual_interface[0]), "n_dofs": problem.n,
           "interface_dofs": int(layer.partition.interface.size)}
    print(f"{problem.n} DOFs, {experts} experts, {out['interface_dofs']} interface DOFs: residual on patch "
          f"interiors {out['residual_interior']:.1e}, on interfaces {out['residual_interface']:.1e}; "
          f"relative L2 error vs scikit-fem {100 * rel_l2:.2f} %")
    return out


if __name__ == "__main__":
    main()
