"""Run a config (``femoe run``) once per training seed and report mean ± std over the seeds.

    OMP_NUM_THREADS=1 python benchmarks/run_seeds.py problems/configs/ds_cpu.toml --seeds 0 1 2
    python benchmarks/run_seeds.py problems/configs/ds_cpu.toml --seeds 0 --methods pihc

Each seed is a separate run ``results/<name>_s<seed>/`` (train.seed = seed: network
initialisation and batch order; the data are shared). Per seed the test error is the mean over
test samples; the table gives the mean ± std of those means over the seeds (and, in brackets,
the mean over seeds of the within-run spread over test samples). Writes
``benchmarks/results/<name>_seeds.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from femoe.train.config import config_from_dict, load_config
    from femoe.train.run import run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+")
    ap.add_argument("--out", help="JSON file (default benchmarks/results/<name>_seeds.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("skfem").setLevel(logging.WARNING)
    base = load_config(args.config)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{base.name}_seeds.json")
    doc = json.loads(out.read_text()) if out.is_file() else {"config": args.config, "seeds": {}}
    for seed in args.seeds:
        d = base.to_dict()
        d["name"] = f"{base.name}_s{seed}"
        d["data"]["dir"] = str(base.data_dir)
        d["train"]["seed"] = seed
        if args.methods:
            d["methods"] = args.methods
        cfg = config_from_dict(d)
        summary = run(cfg, progress=False, overwrite=True)  # a fresh run per seed, as the figures assume
        per = doc["seeds"].setdefault(str(seed), {})
        for m, r in summary["methods"].items():
            per[m] = {k: r.get(k) for k in ("rel_l2_mean", "rel_l2_std", "best_in_span_mean", "residual_rms",
                                            "interface_jump", "steps", "seconds_per_step", "train_seconds",
                                            "rel_l2_after_train_until_mean")}
            if "test_mesh" in r:  # data.test_params: the test on another mesh
                per[m]["test_mesh_rel_l2_mean"] = r["test_mesh"]["rel_l2_mean"]
        print(f"seed {seed}:\n{summary['table']}", flush=True)
        doc["machine"] = platform.processor() or platform.machine()
        doc["summary"] = summarise(doc["seeds"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2))
    print(table(doc["summary"]))


def summarise(seeds: dict) -> dict:
    methods = sorted({m for per in seeds.values() for m in per})
    s = {}
    for m in methods:
        runs = [per[m] for per in seeds.values() if m in per]
        s[m] = {"seeds": len(runs)}
        for key in ("rel_l2_mean", "best_in_span_mean", "rel_l2_after_train_until_mean", "test_mesh_rel_l2_mean"):
            v = [r[key] for r in runs if r.get(key) is not None]
            if v:
                s[m][key.replace("_mean", "")] = [float(np.mean(v)), float(np.std(v))]
        s[m]["within_run_std"] = float(np.mean([r["rel_l2_std"] for r in runs]))
        s[m]["steps"] = runs[0]["steps"]
        s[m]["seconds_per_step"] = float(np.median([r["seconds_per_step"] for r in runs]))
    return s


def table(summary: dict) -> str:
    lines = ["| method | rel. L2 (mean ± std over seeds) | best in span | seeds | steps | s/step |", "|---|---|---|---|---|---|"]
    for m, r in summary.items():
        e = r["rel_l2"]
        span = "-" if "best_in_span" not in r else f"{100 * r['best_in_span'][0]:.2f} ± {100 * r['best_in_span'][1]:.2f} %"
        lines.append(f"| {m} | {100 * e[0]:.2f} ± {100 * e[1]:.2f} % ({100 * r['within_run_std']:.2f}) | {span} | "
                     f"{r['seeds']} | {r['steps']} | {r['seconds_per_step']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
