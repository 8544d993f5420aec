"""PI-HC-MoE training loss on diffusion-sorption (issue 14): what the basis is trained on.

Each variant trains PI-HC-MoE (4 slab experts) with ``problems/configs/ds_cpu.toml`` (its data,
network, solver and seed) changed only in the keys listed, and evaluates it on the test split:

* ``stitched``: the loss of the output (each DOF from its owner's weights; the interface rows see
  the jump between experts);
* ``stitched-iface0.1``: the same, interface rows weighted 0.1;
* ``both``: the mean of ``stitched`` and ``experts``;
* ``experts``: every expert's weights applied on the whole mesh (``B w_k``), averaged over the
  experts (the default since this sweep);
* ``experts-warm90``: ``experts`` after 90 steps trained through one PI-HC solve;
* ``stitched-warm90``: ``stitched`` after the same PI-HC warm start;
* ``experts-300-warm150``: 150 PI-HC steps, then 150 with the experts;
* ``experts-300``, ``pihc-300``: ``experts`` and PI-HC at 300 steps (``ds_cpu.toml`` now).

Every run is a ``femoe run`` in ``results/moe_sweep_<variant>/``; a variant whose
``metrics.json`` is there is read, not rerun (``--rerun`` to train again). On the project's
2-core machine each 180-step MoE run takes 3-6 minutes (two at a time, one thread each).

    OMP_NUM_THREADS=1 python benchmarks/moe_loss_sweep.py [--only experts stitched] [--rerun] [--cross]

``--cross`` adds, for every MoE variant, the test error of PI-HC's single solve on the basis that
variant trained (``pihc_on_this_basis``), and for the PI-HC variant the MoE's on PI-HC's basis
(``moe_on_this_basis``); ``--k-sweep 1 2 4 8 16`` the layer alone with that many experts on the
basis of the last MoE variant listed.

Writes ``benchmarks/results/moe_loss_sweep.json`` (with the PI-HC result of the same seed at
180 steps from ``ds_cpu_seeds_180steps.json`` for comparison).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "stitched": ({"loss": "stitched"}, {"epochs": 15}, "moe"),
    "stitched-iface0.1": ({"loss": "stitched", "interface_loss_weight": 0.1}, {"epochs": 15}, "moe"),
    "both": ({"loss": "both"}, {"epochs": 15}, "moe"),
    "experts": ({"loss": "experts"}, {"epochs": 15}, "moe"),
    "experts-warm90": ({"loss": "experts", "warm_start": 90}, {"epochs": 15}, "moe"),
    "stitched-warm90": ({"loss": "stitched", "warm_start": 90}, {"epochs": 15}, "moe"),
    "experts-300-warm150": ({"loss": "experts", "warm_start": 150}, {"epochs": 25}, "moe"),
    "experts-300": ({"loss": "experts"}, {"epochs": 25}, "moe"),  # last MoE variant: --k-sweep uses it
    "pihc-300": ({}, {"epochs": 25}, "pihc"),
}
KEEP = ("rel_l2_mean", "rel_l2_std", "best_in_span_mean", "residual_rms", "interface_jump", "steps",
        "seconds_per_step", "train_seconds")


def on_trained_basis(task, run_dir: Path, trained: str, method: str, k: int | None = None) -> float:
    """Test error of ``method`` (``"pihc"``, or ``"moe"`` with ``k`` experts, default the
    config's) on the network the ``trained`` run in ``run_dir`` trained: do the experts pick a
    better member of the same span than one solve?"""
    import copy
    import dataclasses

    from femoe.train.methods import build_method
    from femoe.train.run import evaluate

    if k is not None:  # the same data and problem, another number of experts
        task = copy.copy(task)
        task.cfg = dataclasses.replace(task.cfg, experts=dataclasses.replace(task.cfg.experts, k=k))
    m = build_method(method, task)
    m.load_network(run_dir / trained / "checkpoint.pt")
    return float(evaluate(task, m, task.cfg.train.batch_size)["rel_l2_mean"])


def main() -> None:
    from femoe.train.config import config_from_dict, load_config
    from femoe.train.run import run
    from femoe.train.task import Task

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "problems" / "configs" / "ds_cpu.toml"))
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS))
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--cross", action="store_true",
                    help="also evaluate PI-HC (one solve) on the basis each MoE variant trained, and the MoE "
                         "on the basis each PI-HC variant trained")
    ap.add_argument("--k-sweep", type=int, nargs="*", metavar="K",
                    help="also evaluate the layer alone with these numbers of experts (1: PI-HC) on the "
                         "basis of the last MoE variant run, e.g. --only experts-300 --k-sweep 1 2 4 8 16")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "moe_loss_sweep.json"))
    args = ap.parse_args()
    base = load_config(args.config)
    task = None  # one Task (problem and data) for every evaluation on a trained basis
    out = {"config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT)
           else args.config, "machine": platform.processor() or platform.machine(), "variants": {}}
    for name in args.only or VARIANTS:
        experts, train, method = VARIANTS[name]
        d = base.to_dict()
        d["name"] = f"moe_sweep_{name}"
        d["methods"] = [method]
        d["data"]["dir"] = str(base.data_dir)
        d["experts"].update(experts)
        d["train"].update(train)
        cfg = config_from_dict(d)
        metrics = cfg.run_dir / "metrics.json"
        if args.rerun or not metrics.is_file():
            run(cfg, progress=False, overwrite=True)
        r = json.loads(metrics.read_text())["methods"][method]
        row = out["variants"][name] = {"method": method, "experts": experts, "train": train,
                                       **{k: r.get(k) for k in KEEP}}
        cross = ""
        if args.cross:
            task = task or Task(base)
            other = "pihc" if method == "moe" else "moe"
            row[f"{other}_on_this_basis"] = e = on_trained_basis(task, cfg.run_dir, method, other)
            cross = f"  {'PI-HC' if other == 'pihc' else 'MoE'} on this basis {100 * e:.2f} %"
        print(f"{name:20s} {100 * r['rel_l2_mean']:6.2f} %  best in span "
              f"{100 * (r.get('best_in_span_mean') or float('nan')):5.2f} %  steps {r['steps']}{cross}", flush=True)
    if args.k_sweep:
        last = [n for n in (args.only or VARIANTS) if VARIANTS[n][2] == "moe"][-1]
        task = task or Task(base)
        print(f"K sweep on the basis of {last}:")
        errs = {}
        for k in args.k_sweep:
            errs[str(k)] = on_trained_basis(task, base.run_dir.parent / f"moe_sweep_{last}", "moe",
                                            "moe" if k > 1 else "pihc", k)
            print(f"  K = {k:3d} on this basis: {100 * errs[str(k)]:.2f} %", flush=True)
        out["k_sweep"] = {"variant": last, "rel_l2_mean": errs}
    seeds = ROOT / "benchmarks" / "results" / "ds_cpu_seeds_180steps.json"
    if seeds.is_file():
        s0 = json.loads(seeds.read_text())["seeds"].get(str(base.train.seed), {})
        out["pihc_180_same_seed"] = {k: s0.get("pihc", {}).get(k) for k in KEEP}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
