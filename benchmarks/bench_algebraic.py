"""The streamfunction from the vorticity (``femoe.layers.AlgebraicFields``): the solve set up once
against one set up on every call, in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_algebraic.py

Navier-Stokes' ``(K + alpha M) psi = M omega`` for a basis of a training step (batch 2, 5 levels,
112 columns: ``problems/configs/ns_cpu_gnn_tend.toml``) on the 16 x 16 and 32 x 32 periodic grids
and the bundled periodic mesh (3,672 nodes). ``per_call``: :func:`femoe.linalg.sparse_solve`, which
sets the solver up (dense Cholesky below 2,000 unknowns, SuperLU above) on every call, as the first
version of the layer did; ``once``: the layer as it is, :func:`femoe.linalg.solve_with` with the
solver the layer set up when it first ran. The solve alone (the rest of the map is unchanged),
forward and backward, median of ``--repeat`` calls each, the two alternating. Writes ``benchmarks/results/algebraic.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from femoe.linalg import solve_with, sparse_solve
    from femoe.problems import get_problem

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = get_problem("navier_stokes_2d")
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/bench_algebraic.py", "load_before": os.getloadavg()[0],
           "cases": {}}
    for name, params in (("grid16", {"grid": 16}), ("grid32", {"grid": 32}), ("bundled", {})):
        problem = spec.build(n_steps=4, T=2.5, lift="paper", **params)
        af = spec.algebraic_fields(problem)
        af(torch.zeros(1, problem.n, 1, dtype=torch.float64))  # sets the layer's solver up
        solver = af._on(torch.device("cpu"), torch.float64)[0]
        rhs = torch.randn(1, af.derived.size, 2 * 5 * 112, dtype=torch.float64)  # the layer's right-hand sides
        paths = {"per_call": lambda b: sparse_solve(solver.A, b), "once": lambda b: solve_with(solver, b)}
        times = {k: [] for k in paths}
        for _ in range(args.repeat):
            for label, f in paths.items():
                b = rhs.clone().requires_grad_(True)
                t0 = time.perf_counter()
                f(b).square().sum().backward()
                times[label].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        out["cases"][name] = {"dofs": problem.n, "seconds": med, "ratio_per_call_over_once": med["per_call"] / med["once"]}
        print(f"{name} ({problem.n} DOFs): per call {med['per_call']:.4f} s, once {med['once']:.4f} s, "
              f"ratio {med['per_call'] / med['once']:.2f}", flush=True)
    out["load_after"] = os.getloadavg()[0]
    path = ROOT / "benchmarks" / "results" / "algebraic.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
