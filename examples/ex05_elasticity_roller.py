r"""Linear elasticity with rollers: a per-component Dirichlet condition.

PDE (plane strain, Lamé parameters lambda, mu):

    -div sigma(u) = 0  in  Omega = [0, 2] x [0, 1],   sigma(u) = 2 mu eps(u) + lambda tr(eps(u)) I,

with rollers on two sides, each fixing **one** component of the displacement:
u_x = 0 on the left side x = 0 (it may slide vertically) and u_y = 0 on the bottom y = 0 (it may
slide horizontally); a traction sigma n = g = (1, 0.2) on the right side x = 2; top free.
The rollers remove the rigid motions, so the problem is well posed.

femoe: ``ElementVector(ElementTriP2())``, scikit-fem's own ``linear_elasticity`` form passed as
it is, the traction as a facet integrand, and the rollers as
``dirichlet={"left": {"u_x": 0.0}, "bottom": {"u_y": 0.0}}``. Checked against the same system
solved by scikit-fem with its own ``condense`` (DOFs ``get_dofs(...).all("u^1")``), and the
reaction of the left roller against the applied load (equilibrium: ``r_x = -int g_x ds = -1``).

    python examples/ex05_elasticity_roller.py
"""

from __future__ import annotations

import numpy as np
import skfem as fe
import torch
from skfem.models.elasticity import lame_parameters, linear_elasticity

import femoe

E, NU_POISSON = 10.0, 0.3
G = (1.0, 0.2)


def traction(u, v, w):
    """``-g . v`` on the right side (linear in v; the same code runs in scikit-fem and femoe)."""
    return -(G[0] * v[0] + G[1] * v[1])


def main(refine: int = 3) -> dict:
    mesh = fe.MeshTri.init_tensor(np.linspace(0, 2, 2 * 2**refine + 1), np.linspace(0, 1, 2**refine + 1))
    mesh = mesh.with_defaults()  # tags left, right, top, bottom
    basis = fe.Basis(mesh, fe.ElementVector(fe.ElementTriP2()))
    form = linear_elasticity(*lame_parameters(E, NU_POISSON))

    # --- scikit-fem, its own way ------------------------------------------------------------
    A = fe.asm(form, basis)
    fb = fe.FacetBasis(mesh, basis.elem, facets=mesh.boundaries["right"])
    b = fe.asm(fe.LinearForm(lambda v, w: G[0] * v[0] + G[1] * v[1]), fb)
    D = np.concatenate([basis.get_dofs(mesh.boundaries["left"]).all("u^1"),
                        basis.get_dofs(mesh.boundaries["bottom"]).all("u^2")])
    x_skfem = fe.solve(*fe.condense(A, b, D=D))

    # --- femoe: the same form, rollers by component name -------------------------------------
    problem = femoe.Problem(basis, bilinear=form, facets={"right": traction},
                            dirichlet={"left": {"u_x": 0.0}, "bottom": {"u_y": 0.0}}, name="roller")
    u, info = femoe.solve(problem)
    r_left = femoe.reaction(problem, torch.as_tensor(u), "left", "u_x")
    r_bottom = femoe.reaction(problem, torch.as_tensor(u), "bottom", "u_y")
    return {
        "n_dofs": problem.n,
        "n_fixed": int(problem.dirichlet_dofs.size),
        "same_dofs_as_skfem": bool(np.array_equal(problem.dirichlet_dofs, np.sort(D))),
        "max_diff_skfem": float(np.abs(u - x_skfem).max()),
        "max_displacement": float(np.abs(u).max()),
        "reaction_left_x": float(r_left),
        "reaction_bottom_y": float(r_bottom),
    }


if __name__ == "__main__":
    r = main()
    print(f"{r['n_dofs']} DOFs, {r['n_fixed']} fixed (the same as scikit-fem's: {r['same_dofs_as_skfem']})")
    print(f"max |u_femoe - u_skfem| = {r['max_diff_skfem']:.1e} (max |u| = {r['max_displacement']:.3f})")
    print(f"reactions: left roller {r['reaction_left_x']:.12f} (load -1), bottom roller "
          f"{r['reaction_bottom_y']:.12f} (load -0.2)")
