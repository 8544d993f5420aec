"""Reference Newton with a factorisation per step against reused factorisations, same problem, same run.

P1 on the unit square (structured triangles), -div((1 + u^2) grad u) = f with u = 0 on the
boundary and f large enough for several Newton steps, solved by femoe.reference.solve with
SuperLU: ``max_jacobian_age = 1`` (Newton: a Jacobian and a factorisation every step, the
default) against ``max_jacobian_age = K`` (modified Newton: a factorisation kept while its full
steps at least halve the residual). Reports the time of each (best of ``--repeat``), the steps,
the factorisations, the difference between the two solutions, and their ratio. Writes
benchmarks/results/newton_reuse.json.

    OMP_NUM_THREADS=1 python benchmarks/bench_newton_reuse.py [--side 200] [--f 40] [--age 10]
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


def main(side: int, f: float, age: int, repeat: int) -> dict:
    mesh = fe.MeshTri.init_tensor(np.linspace(0, 1, side), np.linspace(0, 1, side)).with_defaults()
    problem = Problem(fe.Basis(mesh, fe.ElementTriP1()),
                      lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - w.f * v,
                      dirichlet={k: 0.0 for k in mesh.boundaries}, defaults={"f": f})
    rows, solutions = {}, {}
    for name, k in (("rebuild", 1), ("reuse", age)):
        best = np.inf
        for _ in range(repeat):
            t = time.perf_counter()
            u, info = solve(problem, {"f": f}, max_jacobian_age=k)
            best = min(best, time.perf_counter() - t)
        solutions[name] = u
        rows[name] = {"max_jacobian_age": k, "seconds": best, "newton_steps": info.iterations,
                      "factorisations": info.linear_setups, "final_residual": info.residual_history[-1],
                      "residual_history": info.residual_history}
        print(f"{name}: {best:.3f} s, {info.iterations} steps, {info.linear_setups} factorisations")
    diff = float(np.abs(solutions["reuse"] - solutions["rebuild"]).max() / np.abs(solutions["rebuild"]).max())
    out = {"problem": f"P1 -div((1 + u^2) grad u) = {f}, unit square, u = 0 on the boundary",
           "dofs": int(problem.n), "linear_solver": "superlu (auto)", "repeat": repeat, **rows,
           "relative_max_difference": diff,
           "ratio_reuse_over_rebuild": rows["reuse"]["seconds"] / rows["rebuild"]["seconds"]}
    print(f"ratio reuse / rebuild = {out['ratio_reuse_over_rebuild']:.3f}; relative difference {diff:.1e}")
    print("wrote", write("newton_reuse", out))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=200)
    ap.add_argument("--f", type=float, default=40.0)
    ap.add_argument("--age", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    main(a.side, a.f, a.age, a.repeat)
