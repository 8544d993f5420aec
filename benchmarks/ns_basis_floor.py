"""Can an input-independent basis hold the Navier-Stokes answer at the CPU size? (issue 14)

    OMP_NUM_THREADS=1 python benchmarks/ns_basis_floor.py

``problems/configs/ns_cpu.toml`` (16 x 16 torus, 4 Crank-Nicolson intervals, lift "paper": the
unknown is z with u = u0 + (t / T) z). A DeepONet's basis spans the same trunk functions for every
input, so its best case is a fixed space. Measured on the 16 test samples:

* ``pod``: the best member (Euclidean fit of z) of the leading N POD modes of the 64 training
  trajectories' z, and PI-HC's error with that fixed basis (its rows pick the member);
* ``krylov``: an input-dependent basis of m tendencies per level: f1 = rhs(omega0) of the
  reference solver, f_{k+1} = the rhs's Jacobian at omega0 times f_k (central differences), each
  with its streamfunction, one column per level and tendency; PI-HC's error with it.

Writes ``benchmarks/results/ns_basis_floor.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from femoe.layers import HardConstraint
    from femoe.train.config import load_config
    from femoe.train.task import Task
    from femoe.problems.navier_stokes_2d import VorticitySolver

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "problems/configs/ns_cpu.toml")
    task = Task(cfg)
    s = task.times / task.problem.config["T"]

    def z_of(sol):  # the lifted unknown of reference trajectories (level 0: 0)
        z = (sol - sol[:, :1]) / np.where(s > 0, s, 1)[None, :, None]
        z[:, 0] = 0
        return z

    ztr, zte = z_of(task.train.solutions.numpy()), z_of(task.test.solutions.numpy())
    ref = task.test.solutions
    S, L, n = zte.shape
    _, _, Vt = np.linalg.svd(ztr[:, 1:].reshape(len(ztr), -1), full_matrices=False)
    layer = HardConstraint(task.problem, rho=cfg.solver.rho, tol=cfg.solver.tol, maxiter=cfg.solver.maxiter,
                           row_scale=task.layer_row_scale(), dt=task.dt)
    params, u0 = task.layer_args(task.test.inputs)
    noise = np.random.default_rng(0).standard_normal((n, 64)) * 1e-3  # level 0 enters no row

    def pihc(B):
        u, info = layer(torch.as_tensor(B), params, u0)
        return float(task.relative_l2(u, ref).mean()), float(info.iterations.double().mean())

    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/ns_basis_floor.py", "samples": S,
           "baseline_u_equals_u0": float(task.relative_l2(torch.zeros(S, L, n, dtype=torch.float64), ref).mean()),
           "pod": {}, "krylov": {}}
    for N in (16, 32, 64):
        P = Vt[:N]
        c = zte[:, 1:].reshape(S, -1) @ P.T
        zb = np.zeros_like(zte)
        zb[:, 1:] = (c @ P).reshape(S, L - 1, n)
        B = np.zeros((S, L, n, N))
        B[:, 1:] = P.T.reshape(L - 1, n, N)[None]
        B[:, 0] = noise[:, :N]
        err, its = pihc(B)
        out["pod"][N] = {"best_in_span": float(task.relative_l2(torch.as_tensor(zb), ref).mean()), "pihc": err}
        print(f"POD N={N}: best {out['pod'][N]['best_in_span']:.4f}, PI-HC {err:.4f}", flush=True)
    vs = VorticitySolver(task.problem)

    def full(f):
        u = np.zeros(n)
        u[vs.iw], u[vs.ip] = f, vs.psi(f)
        return u / np.linalg.norm(u)

    for m in (1, 2, 4, 6):
        B = np.zeros((S, L, n, (L - 1) * m))
        for k in range(S):
            om0 = ref[k, 0, vs.iw].numpy()
            F = [vs.rhs(om0)]
            g = F[0]
            for _ in range(m - 1):
                Jg = (vs.rhs(om0 + 1e-6 * g) - vs.rhs(om0 - 1e-6 * g)) / 2e-6
                F.append(Jg)
                g = Jg / np.linalg.norm(Jg) * np.linalg.norm(F[0])
            for lev in range(1, L):
                for j, f in enumerate(F):
                    B[k, lev, :, (lev - 1) * m + j] = full(f)
        B[:, 0] = noise[:, :B.shape[-1]]
        err, its = pihc(B)
        out["krylov"][m] = {"columns": B.shape[-1], "pihc": err}
        print(f"Krylov m={m} ({B.shape[-1]} columns): PI-HC {err:.4f}", flush=True)
    path = ROOT / "benchmarks" / "results" / "ns_basis_floor.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
