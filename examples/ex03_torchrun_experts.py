"""Experts spread over processes with torchrun (gloo on CPUs, NCCL on GPUs).

PDE: -div((1 + u^2) grad u) = 1 on the unit square, u = 0 on the left and right sides.
A small DeepONet gives N basis fields; PI-HC-MoE with 4 experts constrains them, each rank
solving its share of the experts; the loss is the mean square of the constrained field's
residual, and the network gradients are summed over ranks.

    torchrun --nproc-per-node 2 examples/ex03_torchrun_experts.py --out out/ddp
    python examples/ex03_torchrun_experts.py --out out/single      # the same in one process

Each run writes ``result_rank<r>.pt`` with the field, the loss and every parameter gradient;
the two runs agree to round-off (tests/test_distributed.py checks 1e-10 in float64).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import skfem as fe
import torch

from femoe.experts import HardConstraintMoE
from femoe.experts import distributed as fdist
from femoe.helpers import dot, grad
from femoe.nn import DeepONet
from femoe.problem import Problem


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/ex03")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--fail-rank", type=int, default=-1, help="make this rank fail (to test error handling)")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    rank, world = fdist.init(timeout_s=args.timeout)
    torch.manual_seed(0)
    mesh = fe.MeshTri().refined(4).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    problem = Problem(basis, lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - v,
                      dirichlet={"left": 0.0, "right": 0.0})
    net = DeepONet(n_sensors=1, coord_dim=2, n_outputs=8, width=16, depth=2).double()
    layer = HardConstraintMoE(problem, args.experts, partition="rcb", distributed=world > 1)
    points = torch.tensor(basis.doflocs.T)
    B = net(torch.ones(1, 1, dtype=torch.float64), points)
    if rank == args.fail_rank:
        raise RuntimeError(f"rank {rank} failed on purpose")
    u, info = layer(B)
    loss = problem.residual(u).square().mean()
    loss.backward()
    fdist.sync_gradients(net)
    result = {"u": u.detach(), "loss": loss.detach(), "jump": info.interface_jump,
              "grads": {k: p.grad.detach().clone() for k, p in net.named_parameters()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"result_rank{rank}.pt")
    fdist.shutdown()
    return result


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
