"""PI-HC with the tendencies re-taken at its own solution (``network.tendency_passes``), on a
trained network without retraining (issue 14).

    OMP_NUM_THREADS=1 python benchmarks/ns_tendency_passes.py

The network of ``results/ns_cpu_gnn_tend/pihc`` (``problems/configs/ns_cpu_gnn_tend.toml``: mesh
GNN, streamfunction solved, 12 tendencies per level of the initial state, trained with one pass)
evaluated with p = 1 ... 4 passes: after each PI-HC solve, level l's tendencies are taken at the
solution's level l - 1 and the layer solves again. On the training mesh (16 x 16) and the
32 x 32 test mesh, the test error and the best member of the last pass's span, beside the exact
solution of the Crank-Nicolson rows (the floor any basis meets at best).

Writes ``benchmarks/results/ns_tendency_passes.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = "problems/configs/ns_cpu_gnn_tend.toml"


def main() -> None:
    from femoe.train.config import config_from_dict, load_config
    from femoe.train.methods import build_method
    from femoe.train.task import Task, transfer_method

    torch.set_num_threads(1)
    ckpt = ROOT / "results" / "ns_cpu_gnn_tend" / "pihc" / "checkpoint.pt"
    if not ckpt.is_file():
        sys.exit(f"{ckpt} is missing: OMP_NUM_THREADS=1 femoe run {CONFIG}")
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/ns_tendency_passes.py", "checkpoint":
           str(ckpt.relative_to(ROOT)), "passes": {}}
    for p in (1, 2, 3, 4):
        base = load_config(ROOT / CONFIG)
        d = base.to_dict()
        d["data"]["dir"] = str(ROOT / base.data.dir)
        d["network"]["tendency_passes"] = p
        task = Task(config_from_dict(d))
        m = build_method("pihc", task)
        m.load_network(ckpt)
        m.eval()
        res = {}
        for mesh, t, meth in (("16x16", task, m), ("32x32", None, None)):
            if t is None:
                t = task.test_mesh_task()
                meth = transfer_method(m, t)
                meth.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                u, info = meth(t.test.inputs)
            seconds = time.perf_counter() - t0
            res[mesh] = {"rel_l2": float(t.relative_l2(u, t.test.solutions).mean()),
                         "best_in_span": float(meth.best_in_span(t.test.inputs, t.test.solutions).mean()),
                         "lm_iterations": info["iterations"], "unconverged": info["unconverged"],
                         "seconds": seconds}
        out["passes"][p] = res
        print(f"passes {p}: " + ", ".join(f"{k} {v['rel_l2']:.4f} (span {v['best_in_span']:.4f}, {v['seconds']:.1f} s)"
                                          for k, v in res.items()), flush=True)
    path = ROOT / "benchmarks" / "results" / "ns_tendency_passes.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
