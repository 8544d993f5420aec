"""Overlapping experts on Navier-Stokes (``HardConstraintMoE(overlap=...)``, issue 14).

    OMP_NUM_THREADS=1 python benchmarks/moe_overlap.py

On the networks ``femoe run problems/configs/ns_cpu_gnn.toml`` trained (its MoE's and its
PI-HC's, in ``results/ns_cpu_gnn/``), the MoE layer (2 x 2 RCB experts) with each expert also
enforcing the rows of the DOFs within ``overlap`` rings of its own, without retraining: test
error and the largest interface jump of the stitched field, on the 16 x 16 training mesh. The
periodic, lifted problem gives the experts no global rows, so only their own rows tie each
expert's field to its neighbours'. Writes ``benchmarks/results/moe_overlap.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OVERLAPS = (0, 1, 2, 4)


def main() -> None:
    from femoe.experts import HardConstraintMoE
    from femoe.train.config import config_from_dict, load_config
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    torch.set_num_threads(1)
    base = load_config(ROOT / "problems/configs/ns_cpu_gnn.toml")
    d = base.to_dict()
    d["data"]["dir"] = str(base.data_dir)
    d["methods"] = ["moe"]
    d["data"]["test_params"] = {}
    task = Task(config_from_dict(d))
    e = task.cfg.experts
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/moe_overlap.py", "experts": e.k,
           "partition": e.partition, "bases": {}}
    for basis in ("moe", "pihc"):
        ckpt = ROOT / "results" / "ns_cpu_gnn" / basis / "checkpoint.pt"
        if not ckpt.is_file():
            print(f"skip the {basis} basis: {ckpt} is missing (femoe run problems/configs/ns_cpu_gnn.toml)")
            continue
        m = build_method("moe", task)
        m.load_network(ckpt)
        m.eval()
        rows = {}
        for ov in OVERLAPS:
            m.layer = HardConstraintMoE(task.problem, e.k, partition=e.partition, seed=e.seed, overlap=ov,
                                        **m._layer_kw)
            t0 = time.perf_counter()
            with torch.no_grad():
                u, info = m(task.test.inputs)
            rows[ov] = {"rel_l2": float(task.relative_l2(u, task.test.solutions).mean()),
                        "interface_jump": float(info["interface_jump"]), "seconds": time.perf_counter() - t0}
            print(f"{basis} basis, overlap {ov}: rel. L2 {rows[ov]['rel_l2']:.4f}, jump "
                  f"{rows[ov]['interface_jump']:.3f}", flush=True)
        out["bases"][basis] = rows
    path = ROOT / "benchmarks" / "results" / "moe_overlap.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
