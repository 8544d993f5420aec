"""What each part of the Navier-Stokes basis does, on trained networks without retraining (issue 14).

    OMP_NUM_THREADS=1 python benchmarks/ns_basis_ablation.py

On the 16 test samples of ``problems/configs/ns_cpu_gnn.toml`` (16 x 16 torus, 4 Crank-Nicolson
intervals, the paper's lift), PI-HC's test error and the best member of its span for:

* ``learned_psi``: the mesh GNN of ``results/ns_cpu_gnn/pihc`` as trained there (it spans the
  streamfunction with its own basis functions);
* ``solved_psi``: the same network, the streamfunction computed from the vorticity
  (``network.solve_algebraic``), and that of ``results/ns_cpu_gnn_psi/pihc`` (trained so);
* ``tendencies_m``: the latter plus m Krylov tendencies of the initial state per level
  (``network.tendencies``), m = 2 ... 16: how much of the gain comes from the tendencies alone,
  before a network is trained with them (``problems/configs/ns_cpu_gnn_tend.toml`` does that).

Each checkpoint is present after its ``femoe run``. Writes ``benchmarks/results/ns_basis_ablation.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS = {"ns_cpu_gnn": "problems/configs/ns_cpu_gnn.toml", "ns_cpu_gnn_psi": "problems/configs/ns_cpu_gnn_psi.toml"}


def evaluate(run: str, solve_algebraic: bool, tendencies: int) -> dict:
    """PI-HC's mean test error and best in span with ``run``'s trained network and these options."""
    from femoe.train.config import config_from_dict, load_config
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    base = load_config(ROOT / RUNS[run])
    d = base.to_dict()
    d["data"]["dir"] = str(ROOT / base.data.dir)
    d["methods"] = ["pihc"]
    d["network"]["solve_algebraic"] = solve_algebraic
    d["network"]["tendencies"] = tendencies
    task = Task(config_from_dict(d))
    m = build_method("pihc", task)
    m.load_network(ROOT / "results" / run / "pihc" / "checkpoint.pt")
    m.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        u, info = m(task.test.inputs)
    err = float(task.relative_l2(u, task.test.solutions).mean())
    span = float(m.best_in_span(task.test.inputs, task.test.solutions).mean())
    return {"network": run, "solve_algebraic": solve_algebraic, "tendencies": tendencies, "columns":
            task.cfg.network.n_basis + (task.n_levels - 1) * tendencies, "pihc_rel_l2": err, "best_in_span": span,
            "lm_iterations": info["iterations"], "unconverged": info["unconverged"],
            "seconds": time.perf_counter() - t0}


def main() -> None:
    torch.set_num_threads(1)
    for run in RUNS:
        ckpt = ROOT / "results" / run / "pihc" / "checkpoint.pt"
        if not ckpt.is_file():
            sys.exit(f"{ckpt} is missing: OMP_NUM_THREADS=1 femoe run {RUNS[run]}")
    cases = [("learned_psi", "ns_cpu_gnn", False, 0), ("solved_psi (ns_cpu_gnn's network)", "ns_cpu_gnn", True, 0),
             ("solved_psi", "ns_cpu_gnn_psi", True, 0)]
    cases += [(f"tendencies_{m}", "ns_cpu_gnn_psi", True, m) for m in (2, 4, 6, 8, 12, 16)]
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/ns_basis_ablation.py", "cases": {}}
    for name, run, alg, m in cases:
        out["cases"][name] = r = evaluate(run, alg, m)
        print(f"{name:36s} PI-HC {r['pihc_rel_l2']:.4f}  best in span {r['best_in_span']:.4f}  "
              f"({r['columns']} columns, {r['lm_iterations']:.1f} LM its)", flush=True)
    path = ROOT / "benchmarks" / "results" / "ns_basis_ablation.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
