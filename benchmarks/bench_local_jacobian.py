"""The local Jacobian contraction ``K_eij = sum_q sum_ab phi_dx[a,i,e,q] D[a,b,s,e,q] phi[b,j,e,q]``
on the Navier-Stokes (omega, psi) P1 x P1 space, where the per-element pair tensor ``phi_pair``
exceeds ``PAIR_MAX_ENTRIES`` (32 x 32 periodic mesh: 2,048 elements, 6 quadrature points).

Three kernels on the same pointwise derivatives ``D`` (``s`` = batch x levels states), in one run:

- ``per_point``: the formulation before 2026-12-02, two ``torch.matmul`` calls with the states and
  the quadrature points in the batch dimensions (``S E Q`` products of ``J x J`` matrices);
- ``fallback``: the landed one (``femoe.assembly.form.jacobian_batched``), batched over ``E Q`` and
  then ``E`` matrices with the states inside each product;
- ``pair``: one batched matmul with the pair tensor (``femoe.assembly.form.jacobian_pair``, what
  meshes under the cap use).

And ``trajectory_residual_and_jacobians`` of the whole trajectory with the landed kernel, for
scale. Writes ``benchmarks/results/local_jacobian.json`` (median of repeats, machine load).

    OMP_NUM_THREADS=1 python benchmarks/bench_local_jacobian.py [--grid 32] [--states 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, timeit, write  # noqa: E402


def per_point(t, D, n):
    """The contraction as femoe did it before commit 7df4530 (the "before" of this benchmark)."""
    J, _, S, E, Q = D.shape
    X = torch.matmul(t["phi_dx_eqia"], D.permute(2, 3, 4, 0, 1))  # (s, e, q, i, b)
    X = X.permute(0, 1, 3, 2, 4).reshape(S, E, n, Q * J)
    return torch.matmul(X, t["phi_e_qb_j"])  # (s, e, i, j)


def main() -> None:
    from femoe.assembly.form import jacobian_batched, jacobian_pair
    from femoe.assembly.torch_basis import pair_tensor
    from femoe.problems import get_problem

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--states", type=int, default=10, help="batch x levels (2 samples x 5 levels by default)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    before = load()
    pb = get_problem("navier_stokes_2d").build(grid=args.grid, n_steps=4, T=2.5, lift="paper")
    tb = pb._tb
    t = tb.tensors("cpu", torch.float64)
    J, n, E, Q = t["phi"].shape
    D = torch.randn(J, J, args.states, E, Q, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert "phi_pair" not in t  # the mesh is past the cap: femoe assembles with jacobian_batched
    tp = {**t, "phi_pair": pair_tensor(t)}
    P = tp["phi_pair"]
    kernels = {"per_point": lambda: per_point(t, D, n), "fallback": lambda: jacobian_batched(t, D),
               "pair": lambda: jacobian_pair(tp, D)}
    K0 = kernels["per_point"]()
    err = {k: float((kernels[k]().sub(K0)).abs().max() / K0.abs().max()) for k in ("fallback", "pair")}
    times = {k: timeit(f, repeat=args.repeat) for k, f in kernels.items()}
    U = torch.randn(2, 5, pb.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u0 = torch.randn(2, pb.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = {"initial_state": u0}
    traj = timeit(lambda: pb.trajectory_residual_and_jacobians(U, 0.625, params), repeat=max(2, args.repeat // 2))
    out = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_local_jacobian.py --grid "
                   f"{args.grid} --states {args.states}",
        "elements": E, "quadrature_points": Q, "jets": J, "local_dofs": n, "states": args.states,
        "pair_tensor_mb": P.numel() * 8 / 2**20, "seconds": times,
        "ratio_per_point_over_fallback": times["per_point"] / times["fallback"],
        "ratio_fallback_over_pair": times["fallback"] / times["pair"],
        "max_relative_difference_to_per_point": err,
        "trajectory_residual_and_jacobians_seconds": traj,
        "load_before_after": [before, load()],
    }
    path = write("local_jacobian", out)
    print({k: out[k] for k in ("seconds", "ratio_per_point_over_fallback", "ratio_fallback_over_pair",
                               "max_relative_difference_to_per_point", "trajectory_residual_and_jacobians_seconds")})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
