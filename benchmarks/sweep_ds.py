"""Diffusion-sorption PI-HC sweep (issue 14): basis size N, learning-rate schedule, time scheme
theta and row weights, with the best-in-span error beside the PI-HC test error.

"Best in span" is the error of the best member of span(B) against the reference (least squares
in the mass norm, per test sample): when the PI-HC error is far above it the constraint rows
pick a poor member of the span; when close, the basis is the limit.

Each variant trains PI-HC on ``problems/configs/ds_cpu.toml`` (its data, network and solver)
with femoe's own Trainer, physics-only, for ``--steps`` steps, then evaluates on the test split.

    OMP_NUM_THREADS=1 python benchmarks/sweep_ds.py            # the committed sweep (40 steps -> 4 epochs = 48; 9 min)
    python benchmarks/sweep_ds.py --steps 180 --only N64-recipe  # one variant, longer

Writes ``benchmarks/results/sweep_ds.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

# name: (n_basis, schedule, theta, row_weights, dirichlet_weight)
VARIANTS = {
    "N16-landed": (16, "exponential", 0.5, "mass", 1.0),  # as landed: lr 1e-3 -> 1e-4, CN, 1/M_ii
    "N16-recipe": (16, "constant", 1.0, "boundary", 1.0),  # constant lr, implicit Euler, boundary rows
    "N32-landed": (32, "exponential", 0.5, "mass", 1.0),
    "N32-recipe": (32, "constant", 1.0, "boundary", 1.0),
    "N64-landed": (64, "exponential", 0.5, "mass", 1.0),
    "N64-recipe": (64, "constant", 1.0, "boundary", 1.0),
    "N64-const-cn-mass": (64, "constant", 0.5, "mass", 1.0),  # constant lr alone (issue 14's 8.5 %)
    "N64-const-ie-mass": (64, "constant", 1.0, "mass", 1.0),  # + implicit Euler
    "N64-stair-ie-bnd": (64, "staircase", 1.0, "boundary", 1.0),  # lr halved every steps/3
}

#: the committed sweep (about 15 min on the shared 2-core machine at 40 steps); the others by --only
DEFAULT = ["N16-landed", "N16-recipe", "N32-recipe", "N64-landed", "N64-recipe"]


def variant_config(base: dict, name: str, steps: int, seed: int, results: str, tol: float = 1e-6) -> dict:
    n_basis, schedule, theta, rows, dw = VARIANTS[name]
    d = copy.deepcopy(base)
    d["name"] = f"sweep_ds_{name}_s{seed}"
    d["results"] = results
    d["methods"] = ["pihc"]
    d["problem"]["params"] = {**d["problem"]["params"], "theta": theta}
    d["data"]["dir"] = str(ROOT / "data" / "ds_cpu")
    d["network"]["n_basis"] = n_basis
    spe = -(-d["data"]["n_train"] // d["train"]["batch_size"])
    d["train"].update(schedule=schedule, seed=seed, epochs=-(-steps // spe), max_steps_per_epoch=0,
                      lr=1e-3, lr_final=1e-4, lr_hold=max(steps // 3, 1), lr_decay=0.5, clip_grad=1.0)
    d["solver"].update(row_weights=rows, dirichlet_weight=dw, tol=tol)
    return d


def run_variant(cfg_dict: dict) -> dict:
    from femoe.train.config import config_from_dict
    from femoe.train.run import evaluate
    from femoe.train.task import Task
    from femoe.train.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    task = Task(cfg)
    tr = Trainer(cfg, "pihc", task)
    t0 = time.perf_counter()
    tr.fit(progress=False)
    train_s = time.perf_counter() - t0
    m = evaluate(task, tr.method, cfg.train.batch_size)
    return {"steps": tr.step, "train_seconds": train_s, "seconds_per_step": float(np.median(tr.step_times)),
            "rel_l2_mean": m["rel_l2_mean"], "rel_l2_std": m["rel_l2_std"],
            "best_in_span_mean": m["best_in_span_mean"], "best_in_span_std": m["best_in_span_std"],
            "residual_rms": m["residual_rms"]}


def rows_floor(base: dict) -> dict:
    """Relative L2 of the exact solution of the theta-scheme rows (the saved dt) against the
    reference, per theta: no method whose output satisfies those rows can do better."""
    from femoe.train.config import config_from_dict
    from femoe.train.task import Task
    from femoe.problems.diffusion_sorption_1d import SPEC, _Operator

    d = copy.deepcopy(base)
    d["data"]["dir"] = str(ROOT / "data" / "ds_cpu")
    task = Task(config_from_dict(d))
    out = {}
    for theta in (0.5, 1.0):
        op = _Operator(SPEC.build(**{**d["problem"]["params"], "theta": theta}))
        errs = []
        for u0, ref in zip(task.test.inputs.numpy(), task.test.solutions.numpy()):
            U = [u0.astype(float)]
            for k in range(len(task.times) - 1):
                U.append(op.step(U[-1], task.dt, theta, task.times[k + 1])[0])
            errs.append(float(task.relative_l2(torch.as_tensor(np.stack(U))[None], torch.as_tensor(ref)[None])))
        out[str(theta)] = {"mean": float(np.mean(errs)), "std": float(np.std(errs))}
        print(f"exact theta = {theta} rows vs reference: {100 * np.mean(errs):.2f} ± {100 * np.std(errs):.2f} %",
              flush=True)
    return out


def main() -> None:
    import tomllib

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep_ds.json"))
    ap.add_argument("--tol", type=float, default=1e-6, help="LM tolerance (relative gradient norm)")
    ap.add_argument("--results", default="/tmp/femoe_sweep_ds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = tomllib.loads((ROOT / "problems" / "configs" / "ds_cpu.toml").read_text())
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    rows = doc.get("variants", {})
    floor = doc.get("rows_floor") or rows_floor(base)
    for name in args.only:
        runs = []
        for seed in args.seeds:
            cfg = variant_config(base, name, args.steps, seed, args.results, args.tol)
            shutil.rmtree(Path(args.results) / cfg["name"], ignore_errors=True)
            r = run_variant(cfg)
            runs.append(r)
            print(f"{name} seed {seed}: PI-HC {100 * r['rel_l2_mean']:.2f}%  best-in-span "
                  f"{100 * r['best_in_span_mean']:.2f}%  {r['steps']} steps, {r['seconds_per_step']:.3f} s/step",
                  flush=True)
        e = np.array([r["rel_l2_mean"] for r in runs])
        s = np.array([r["best_in_span_mean"] for r in runs])
        n_basis, schedule, theta, rw, dw = VARIANTS[name]
        rows[f"{name}@{args.steps}"] = {"variant": name, "n_basis": n_basis, "schedule": schedule, "theta": theta, "row_weights": rw,
                      "dirichlet_weight": dw, "tol": args.tol, "steps": args.steps, "seeds": args.seeds,
                      "pihc_mean": float(e.mean()), "pihc_std": float(e.std()),
                      "best_in_span_mean": float(s.mean()), "best_in_span_std": float(s.std()), "runs": runs}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                   "command": "OMP_NUM_THREADS=1 python benchmarks/sweep_ds.py", "rows_floor": floor,
                                   "variants": rows},
                                  indent=2))


if __name__ == "__main__":
    main()
