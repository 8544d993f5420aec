"""Reference solve time at 1e4, 1e5 and 1e6 DOFs: SuperLU against AMG-CG, same problem, same run.

P1 Poisson -lap u = 1 with u = 0 on the boundary of the unit square (structured triangles),
solved by femoe.reference.solve (Newton: one step for a linear problem). Reports assembly,
solve and total times and the AMG-CG iteration count. Writes benchmarks/results/reference.json.

    python benchmarks/bench_reference.py [--sizes 1e4 1e5 1e6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import skfem as fe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

from femoe.helpers import dot, grad  # noqa: E402
from femoe.problem import Problem  # noqa: E402
from femoe.reference import solve  # noqa: E402


def run(n_dofs: float, methods=("superlu", "amg-cg")) -> dict:
    side = int(round(np.sqrt(n_dofs)))
    t = time.perf_counter()
    mesh = fe.MeshTri.init_tensor(np.linspace(0, 1, side), np.linspace(0, 1, side)).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - v,
                      dirichlet={k: 0.0 for k in mesh.boundaries})
    setup = time.perf_counter() - t
    row = {"dofs": int(basis.N), "setup_s": setup}
    ref = None
    for m in methods:
        t = time.perf_counter()
        u, info = solve(problem, linear_solver=m, rtol=1e-9, atol=1e-12)
        total = time.perf_counter() - t
        row[m] = {"total_s": total, "newton_steps": info.iterations,
                  "linear_iterations": info.linear_iterations, "final_residual": info.residual_norms[-1]}
        if ref is None:
            ref = u
        else:
            row[m]["max_diff_to_first"] = float(np.abs(u - ref).max())
        print(f"n={basis.N}: {m} {total:.2f} s ({info.linear_iterations} linear its)")
    row["ratio_superlu_over_amg"] = row["superlu"]["total_s"] / row["amg-cg"]["total_s"]
    return row


def main(sizes) -> dict:
    rows = [run(s) for s in sizes]
    print("wrote", write("reference", {"problem": "P1 Poisson, unit square", "rows": rows}))
    return {"rows": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    main(ap.parse_args().sizes)
