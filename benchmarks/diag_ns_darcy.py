"""Diagnostics quoted in docs/results.md (Navier-Stokes and Darcy section), on the checkpoints of
`femoe run problems/configs/darcy_cpu.toml` and `femoe run problems/configs/ns_cpu.toml`.

    OMP_NUM_THREADS=1 python benchmarks/diag_ns_darcy.py

1. Darcy PI-HC (trained GNN) re-evaluated with other ridges and Dirichlet-row weights: does the
   constraint pick a better member of the same basis?
2. Darcy PI-HC and PI-HC-MoE on a basis holding the reference (plus 7 random columns): the layers
   return it (so a 99.9 % MoE is a training outcome).
3. Navier-Stokes PI-HC (trained): the norm of its z against the reference's z, and the mean-square
   rows of z = 0, of PI-HC's z and of the reference's z.
"""

import torch

from femoe.experts import HardConstraintMoE
from femoe.layers import HardConstraint
from femoe.train.config import load_config
from femoe.train.methods import build_method
from femoe.train.run import evaluate
from femoe.train.task import Task


def trained(cfg, name, task):
    m = build_method(name, task)
    m.load_network(cfg.run_dir / name / "checkpoint.pt")  # the layer is rebuilt from cfg
    return m


def darcy_rows() -> None:
    for key, values in (("rho", (1e-4, 1e-6, 1e-9, 1e-12)), ("dirichlet_weight", (1.0, 100.0, 1e4))):
        for v in values:
            cfg = load_config("problems/configs/darcy_cpu.toml")
            setattr(cfg.solver, key, v)
            task = Task(cfg)
            r = evaluate(task, trained(cfg, "pihc", task), 4)
            print(f"darcy pihc {key}={v:g}: rel L2 {100 * r['rel_l2_mean']:.2f} %")


def darcy_exact_basis() -> None:
    cfg = load_config("problems/configs/darcy_cpu.toml")
    task = Task(cfg)
    inp, ref = task.test.inputs[:2], task.test.solutions[:2].double()
    params, _ = task.layer_args(inp)
    torch.manual_seed(0)
    B = torch.randn(2, task.n, 8, dtype=torch.float64) * 0.01
    B[:, :, 0] = ref
    for name, layer in (("pihc", HardConstraint(task.problem, rho=1e-4)),
                        ("moe", HardConstraintMoE(task.problem, 4, partition="metis", rho=1e-4))):
        u, _ = layer(B, params)
        print(f"darcy {name} with the reference in the basis: rel L2 {task.relative_l2(u, ref).tolist()}")


@torch.no_grad()
def ns_z() -> None:
    cfg = load_config("problems/configs/ns_cpu.toml")
    task = Task(cfg)
    m = trained(cfg, "pihc", task)
    inp, ref = task.test.inputs[:2], task.test.solutions[:2].double()
    z, _ = m(inp)
    s = torch.as_tensor(task.times / task.problem.config["T"])
    zt = torch.zeros_like(ref)
    zt[:, 1:] = (ref[:, 1:] - ref[:, :1]) / s[1:, None]
    params, u0 = task.layer_args(inp)
    print("ns pihc |z| per level", z.norm(dim=-1).tolist())
    print("ns reference |z| per level", zt.norm(dim=-1).tolist())
    for label, f in (("z = 0", 0 * z), ("PI-HC z", z), ("reference z", zt)):
        print(f"ns mean-square rows of {label}: {float(task.residual(f, params, u0).square().mean()):.4f}")


if __name__ == "__main__":
    darcy_rows()
    darcy_exact_basis()
    ns_z()
