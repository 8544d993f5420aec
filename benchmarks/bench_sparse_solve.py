"""Differentiable sparse solve (forward + adjoint backward) against one plain SciPy splu solve.

P1 Poisson stiffness on a structured triangle mesh of the unit square whose node numbering is
randomly shuffled (as an unstructured mesher's would be), Dirichlet DOFs condensed, at ~1e4 and
~1e5 DOFs. Timed per repeat, interleaved so that load on a shared machine hits all variants alike:

- ``scipy``: ``splu(K, MMD_AT_PLUS_A, symmetric mode)`` + one solve (K already in CSC);
- ``femoe_<solver>``: ``femoe.linalg.sparse_solve`` on values and b that require grad, then
  ``backward()`` (factorisation + forward solve + one adjoint solve + the gradient on the pattern).

The ratio is median femoe time / median scipy time from the same run (goal <= 1.5). Writes
benchmarks/results/sparse_solve.json.

    python benchmarks/bench_sparse_solve.py [--sides 101 317] [--repeat 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import skfem as fe
import torch
from skfem.models.poisson import laplace, unit_load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

from femoe.linalg import sparse_solve  # noqa: E402
from femoe.sparse import BatchedCSR, CSRPattern  # noqa: E402

logger = logging.getLogger("bench_sparse_solve")


def shuffled_poisson(n_side: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Condensed P1 stiffness and load on an ``n_side`` x ``n_side`` grid with shuffled nodes."""
    mesh = fe.MeshTri.init_tensor(np.linspace(0, 1, n_side), np.linspace(0, 1, n_side))
    perm = np.random.default_rng(seed).permutation(mesh.nvertices)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size)
    mesh = fe.MeshTri(mesh.p[:, perm], inverse[mesh.t])
    basis = fe.Basis(mesh, fe.ElementTriP1())
    K, f = fe.asm(laplace, basis), fe.asm(unit_load, basis)
    Kc, fc, _, _ = fe.condense(K, f, D=basis.get_dofs())
    Kc = sp.csr_matrix(Kc)
    Kc.sum_duplicates()
    Kc.sort_indices()
    return Kc, fc


def run_size(n_side: int, repeat: int, solvers: list[str]) -> dict:
    K, f = shuffled_poisson(n_side)
    n = K.shape[0]
    K_csc = K.tocsc()
    pattern = CSRPattern.from_scipy(K)
    values0 = torch.tensor(K.data)[None]
    b0 = torch.tensor(f)[None]
    weight = torch.randn(1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def scipy_solve():
        lu = sla.splu(K_csc, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        return lu.solve(f)

    def femoe_solve(name):
        values = values0.clone().requires_grad_()
        b = b0.clone().requires_grad_()
        x = sparse_solve(BatchedCSR(pattern, values), b, solver=name)
        (x * weight).sum().backward()
        return x, values.grad, b.grad

    # first call: includes the pattern-level caches (transpose permutation, int32 indices)
    t = time.perf_counter()
    x, grad_values, grad_b = femoe_solve("superlu")
    first_call = time.perf_counter() - t
    x_ref = scipy_solve()
    error = float(np.abs(x.detach().numpy()[0] - x_ref).max() / np.abs(x_ref).max())

    times: dict[str, list[float]] = {"scipy": [], **{f"femoe_{s}": [] for s in solvers}}
    for _ in range(repeat):
        for key in times:
            t = time.perf_counter()
            scipy_solve() if key == "scipy" else femoe_solve(key[len("femoe_"):])
            times[key].append(time.perf_counter() - t)
    medians = {key: statistics.median(v) for key, v in times.items()}
    result = {
        "dofs": int(n),
        "nnz": int(K.nnz),
        "repeat": repeat,
        "median_s": medians,
        "all_s": times,
        "ratio": {s: medians[f"femoe_{s}"] / medians["scipy"] for s in solvers},
        "first_call_superlu_s": first_call,
        "relative_error_vs_scipy": error,
    }
    logger.info("n=%d: %s", n, {k: round(v, 4) for k, v in medians.items()} | {"ratio": result["ratio"]})
    return result


def main(sides: list[int], repeat: int, solvers: list[str]) -> dict:
    payload = {
        "description": __doc__.strip().splitlines()[0],
        "loadavg_before": os.getloadavg(),
        "sizes": [run_size(s, repeat, solvers) for s in sides],
    }
    payload["loadavg_after"] = os.getloadavg()
    path = write("sparse_solve", payload)
    logger.info("wrote %s", path)
    return payload


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[101, 317], help="grid points per side")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--solvers", nargs="+", default=["superlu", "auto"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("skfem").setLevel(logging.WARNING)
    main(args.sides, args.repeat, args.solvers)
