"""Worker for tests/test_fault_injection.py, launched by torchrun (or alone, as one process).

PI-HC-MoE (4 experts) on -div(kappa grad u) = 1, u = 0 on the left and right sides, with the
basis ``B`` and the coefficient ``kappa`` held as leaf tensors (not module parameters).

--mode ok:    write result_rank<r>.pt with u and the gradients of B and kappa, summed over ranks
              by sync_gradients([B, kappa]) (single process: the reference)
--mode raise: rank 1 raises before the constraint layer
--mode hang:  rank 1 sleeps before the constraint layer; rank 0 waits in the all-reduce until the
              process-group timeout (--timeout) and stops with DistributedError
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import skfem as fe
import torch

from femoe.errors import DistributedError
from femoe.experts import HardConstraintMoE
from femoe.experts import distributed as fdist
from femoe.helpers import dot, grad
from femoe.problem import Problem


def setup(distributed: bool):
    """``(layer, B, kappa, x)``: the MoE layer and the leaf tensors it is applied to."""
    mesh = fe.MeshTri().refined(3).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, lambda u, v, w: w.kappa * dot(grad(u), grad(v)) - v,
                      dirichlet={"left": 0.0, "right": 0.0}, coefficients={"kappa": "constant"})
    layer = HardConstraintMoE(problem, 4, partition="rcb", distributed=distributed)
    x = torch.as_tensor(basis.doflocs, dtype=torch.float64)
    B = torch.stack([x[0] ** i * x[1] ** j for i in range(3) for j in range(2)], -1)[None].requires_grad_()
    kappa = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    return layer, B, kappa, x


def loss_of(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (u * torch.sin(3 * x[0]) * x[1]).sum()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("ok", "raise", "hang"), default="ok")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    rank, world = fdist.init("gloo", timeout_s=args.timeout)
    layer, B, kappa, x = setup(world > 1)
    if rank == 1 and args.mode == "raise":
        raise RuntimeError("rank 1 failed on purpose")
    if rank == 1 and args.mode == "hang":
        time.sleep(3600)
    try:
        u, _ = layer(B, {"kappa": kappa})
    except DistributedError as exc:
        print(f"rank {rank}: DistributedError: {exc}", file=sys.stderr, flush=True)
        return 3
    loss_of(u, x).backward()
    partial = {"B": B.grad.clone(), "kappa": kappa.grad.clone()}  # this rank's experts' share
    fdist.sync_gradients([B, kappa])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"u": u.detach(), "B": B.grad, "kappa": kappa.grad, "partial": partial},
               out / f"result_rank{rank}.pt")
    fdist.shutdown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
