"""PI-HC followed by patch mode (method ``pihc_patch``) on trained PI-HC networks (issue 14).

    OMP_NUM_THREADS=1 python benchmarks/patch_correction.py

``pihc_patch`` trains exactly as PI-HC (same network, rows, loss and seed), so its network is
PI-HC's; this script evaluates it on the PI-HC checkpoints that the runs below leave, without
training again: PI-HC's test error, then that of the same field corrected by patch mode (each
expert solves the weak form exactly on its patch interior, with the PI-HC field's interface
values), for the run's own number of experts and for more. Runs whose checkpoint is missing are
skipped (run the command in ``RUNS`` first). Writes ``benchmarks/results/patch_correction.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: run folder -> (config, command that trains its PI-HC)
RUNS = {
    "darcy_cpu_energy_sample": ("problems/configs/darcy_cpu_energy_sample.toml",
                                "femoe run problems/configs/darcy_cpu_energy_sample.toml --methods pihc"),
    "default": ("problems/configs/default.toml", "femoe run"),
    "ds_cpu_extrapolation": ("problems/configs/ds_cpu_extrapolation.toml",
                             "femoe run problems/configs/ds_cpu_extrapolation.toml"),
    "ns_cpu_gnn": ("problems/configs/ns_cpu_gnn.toml", "femoe run problems/configs/ns_cpu_gnn.toml"),
    "ns_cpu_gnn_long": ("problems/configs/ns_cpu_gnn_long.toml", "femoe run problems/configs/ns_cpu_gnn_long.toml"),
    **{f"ds_cpu_long_s{s}": ("problems/configs/ds_cpu_long.toml",
                             "python benchmarks/run_seeds.py problems/configs/ds_cpu_long.toml --seeds 0 1 2")
       for s in (0, 1, 2)},
}
EXPERTS = (4, 16)


def main() -> None:
    from femoe.train.config import config_from_dict, load_config
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), help="only these runs (the JSON keeps the others')")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = ROOT / "benchmarks" / "results" / "patch_correction.json"
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/patch_correction.py", "runs": {}}
    if args.runs and path.is_file():
        out["runs"] = json.loads(path.read_text())["runs"]
    for run, (config, command) in RUNS.items():
        if args.runs and run not in args.runs:
            continue
        ckpt = ROOT / "results" / run / "pihc" / "checkpoint.pt"
        if not ckpt.is_file():
            print(f"skip {run}: {ckpt} is missing ({command})")
            continue
        d = load_config(ROOT / config).to_dict()
        d["data"]["dir"] = str(ROOT / d["data"].get("dir", f"data/{d['name']}"))
        res = {"config": config, "checkpoint": str(ckpt.relative_to(ROOT)), "partition": d["experts"]["partition"]}
        for k in EXPERTS:
            d["experts"]["k"] = k
            d["methods"] = ["pihc", "pihc_patch"]
            task = Task(config_from_dict(d))
            ref = task.test.solutions
            until = task.cfg.train.train_until
            later = None if until is None else int(np.searchsorted(task.times, until, side="right"))

            def after(u):  # the error on the levels after train.train_until (never trained on)
                return float(task.relative_l2(u[:, later:].contiguous(), ref[:, later:].contiguous()).mean())

            if "pihc" not in res:
                m = build_method("pihc", task)
                m.load_network(ckpt)
                m.eval()
                with torch.no_grad():
                    u, _ = m(task.test.inputs)
                res["pihc"] = float(task.relative_l2(u, ref).mean())
                if later is not None:
                    res["pihc_after_train_until"] = after(u)
            m = build_method("pihc_patch", task)
            m.load_network(ckpt)
            m.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                u, info = m(task.test.inputs)
            err = task.relative_l2(u, ref)
            res[f"pihc_patch_k{k}"] = {"rel_l2_mean": float(err.mean()), "rel_l2_std": float(err.std()),
                                       "unconverged": info["unconverged"],
                                       "seconds_all_test_samples": time.perf_counter() - t0}
            if later is not None:
                res[f"pihc_patch_k{k}"]["rel_l2_after_train_until_mean"] = after(u)
            print(f"{run}: PI-HC {res['pihc']:.4f}, + patch (K = {k}) {float(err.mean()):.4f}", flush=True)
        out["runs"][run] = res
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
