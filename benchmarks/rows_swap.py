"""PI-HC on a trained basis with other row weights, without retraining (issue 14, Darcy).

    OMP_NUM_THREADS=1 python benchmarks/rows_swap.py

For each trained PI-HC checkpoint below (present after its ``femoe run``), the test error of the
layer with the rows it was trained with and with the other steady choices of
``solver.row_weights`` ("mass", "energy", "energy_sample"): whether the rows, not the basis,
decide how far from the reference the chosen member of span(B) lies.

* ``results/darcy_cpu/pihc`` (``problems/configs/darcy_cpu.toml``, mass rows);
* ``results/darcy_cpu_energy_long/pihc`` (``problems/configs/darcy_cpu_energy_long.toml``).

Then the MoE layer (4 METIS experts) on the basis of ``results/darcy_cpu_energy_sample/pihc``
(``problems/configs/darcy_cpu_energy_sample.toml``, PI-HC trained with each sample's energy
rows), with each choice of rows, the energy ones in their per-expert (additive Schwarz) form
(:class:`femoe.layers.BlockEnergyRows`): do local experts pick as good a member of that span as
the single solve? And with overlapping experts (each also enforcing the rows within r rings of
its DOFs), how much overlap does it take?

Writes ``benchmarks/results/rows_swap.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS = {"darcy_cpu": "problems/configs/darcy_cpu.toml",
        "darcy_cpu_energy_long": "problems/configs/darcy_cpu_energy_long.toml"}


def trained(base, ckpt: Path, method: str, rows: str | None = None):
    """``(task, method)``: ``base``'s task with ``rows`` as ``solver.row_weights`` (default its
    own) and ``method`` carrying the network of checkpoint ``ckpt``, in evaluation mode."""
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    d = base.to_dict()
    if rows is not None:
        d["solver"]["row_weights"] = rows
    d["data"]["dir"] = str(base.data_dir)
    d["methods"] = [method]
    task = Task(config_from_dict(d))
    m = build_method(method, task)
    m.load_network(ckpt)
    m.eval()
    return task, m


def test_error(task, m) -> float:
    """Mean relative L2 error of ``m`` on ``task``'s test split."""
    with torch.no_grad():
        u, _ = m(task.test.inputs)
    return float(task.relative_l2(u, task.test.solutions).mean())


def main() -> None:
    from femoe.experts import HardConstraintMoE
    from femoe.train.config import load_config

    torch.set_num_threads(1)
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/rows_swap.py", "runs": {}}
    for run, config in RUNS.items():
        ckpt = ROOT / "results" / run / "pihc" / "checkpoint.pt"
        if not ckpt.is_file():
            print(f"skip {run}: {ckpt} is missing (femoe run {config})")
            continue
        base = load_config(ROOT / config)
        res = {"trained_with": base.solver.row_weights, "checkpoint": str(ckpt.relative_to(ROOT)), "rel_l2": {}}
        for rows in ("mass", "energy", "energy_sample"):
            res["rel_l2"][rows] = test_error(*trained(base, ckpt, "pihc", rows))
            print(f"{run} (trained with {base.solver.row_weights}) evaluated with {rows}: {res['rel_l2'][rows]:.4f}",
                  flush=True)
        out["runs"][run] = res
    moe_run = "darcy_cpu_energy_sample"
    ckpt = ROOT / "results" / moe_run / "pihc" / "checkpoint.pt"
    if ckpt.is_file():
        base = load_config(ROOT / f"problems/configs/{moe_run}.toml")
        res = {"basis": str(ckpt.relative_to(ROOT)), "experts": base.experts.k, "partition": base.experts.partition,
               "rel_l2": {}}
        for method, rows in (("pihc", "energy_sample"), ("moe", "energy_sample"), ("moe", "energy"), ("moe", "mass")):
            res["rel_l2"][f"{method}_{rows}"] = test_error(*trained(base, ckpt, method, rows))
            print(f"{moe_run} basis, {method} with {rows} rows: {res['rel_l2'][f'{method}_{rows}']:.4f}", flush=True)
        # overlapping experts (each also enforces the rows within r rings of its DOFs), energy_sample
        # rows: how much overlap the local experts need to pick as good a member as the single solve
        task, m = trained(base, ckpt, "moe")
        e = task.cfg.experts
        res["overlap"] = {}
        for ov in (2, 4, 8, 16, 32):
            m.layer = HardConstraintMoE(task.problem, e.k, partition=e.partition, seed=e.seed, overlap=ov,
                                        **m._layer_kw)
            rows = [r.size / task.n for g in m.layer.groups for r in g.rows_global]
            res["overlap"][ov] = {"rel_l2": test_error(task, m), "rows_per_expert_over_n": sum(rows) / len(rows)}
            r = res["overlap"][ov]
            print(f"{moe_run} basis, moe with energy_sample rows and overlap {ov}: {r['rel_l2']:.4f} "
                  f"(rows per expert {r['rows_per_expert_over_n']:.2f} n)", flush=True)
        out["moe_on_pihc_basis"] = res
    else:
        print(f"skip the MoE swap: {ckpt} is missing (femoe run problems/configs/{moe_run}.toml --methods pihc)")
    path = ROOT / "benchmarks" / "results" / "rows_swap.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
