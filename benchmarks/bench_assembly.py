"""Residual + Jacobian evaluation in torch (CPU) against scikit-fem's assembly of the same matrix.

P1 triangles, ~1e5 DOFs; nonlinear -div((1 + u^2) grad u) = 1 and linear Poisson. The ratio
is torch time / scikit-fem time from the same run (median of repeats). Writes
benchmarks/results/assembly.json.

    python benchmarks/bench_assembly.py [--n-side 317]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import skfem as fe
import torch
from skfem.helpers import dot as sk_dot, grad as sk_grad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timeit, write  # noqa: E402

from femoe.helpers import dot, grad  # noqa: E402
from femoe.problem import Problem  # noqa: E402


@fe.LinearForm
def sk_res(v, w):
    u = w["u"]
    return sk_dot((1 + u**2) * sk_grad(u), sk_grad(v)) - v


@fe.BilinearForm
def sk_jac(du, v, w):
    u = w["u"]
    return sk_dot((1 + u**2) * sk_grad(du), sk_grad(v)) + sk_dot(2 * u * du * sk_grad(u), sk_grad(v))


@fe.BilinearForm
def sk_lap(u, v, w):
    return sk_dot(sk_grad(u), sk_grad(v))


def main(n_side: int = 317, repeat: int = 5) -> dict:
    mesh = fe.MeshTri.init_tensor(np.linspace(0, 1, n_side), np.linspace(0, 1, n_side))
    basis = fe.Basis(mesh, fe.ElementTriP1())
    u_np = np.sin(basis.doflocs[0]) * basis.doflocs[1]
    u = torch.tensor(u_np)
    out = {"dofs": int(basis.N), "elements": int(mesh.nelements)}

    nonlin = Problem(basis, lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - v)
    lin = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)))
    for name, prob, sk in (
        ("nonlinear", nonlin, lambda: (sk_res.assemble(basis, u=basis.interpolate(u_np)),
                                       sk_jac.assemble(basis, u=basis.interpolate(u_np)))),
        ("poisson", lin, lambda: sk_lap.assemble(basis)),
    ):
        t_torch = timeit(lambda: prob.residual_and_jacobian(u), repeat=repeat)
        t_res = timeit(lambda: prob.residual(u), repeat=repeat)
        t_sk = timeit(sk, repeat=repeat)
        out[name] = {
            "torch_residual_and_jacobian_s": t_torch,
            "torch_residual_s": t_res,
            "scikit_fem_s": t_sk,
            "ratio_torch_over_scikit_fem": t_torch / t_sk,
        }
        print(f"{name}: torch R+J {t_torch:.3f} s, torch R {t_res:.3f} s, scikit-fem {t_sk:.3f} s, "
              f"ratio {t_torch / t_sk:.2f}")
    print("wrote", write("assembly", out))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-side", type=int, default=317, help="vertices per side (317 -> ~1e5 DOFs)")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    main(a.n_side, a.repeat)
