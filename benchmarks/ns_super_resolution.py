"""Super-resolution on meshes: where should a network trained on a coarse mesh run when it is
tested on a finer one (issue 14)?

    OMP_NUM_THREADS=1 python benchmarks/ns_super_resolution.py [config] [--passes 1 2 3]

The trained PI-HC network of ``results/<name>/pihc`` (default config
``problems/configs/ns_cpu_gnn_tend3.toml``: mesh GNN trained on the 16 x 16 periodic mesh,
streamfunction solved, 12 tendencies per level) is tested, with p tendency passes, on the
training mesh and on the 32 x 32 mesh of ``data.test_params`` two ways:

- ``test``: the network rebuilt on the test mesh (a mesh GNN then runs on the fine graph, whose
  edges are half as long as those it was trained on);
- ``train``: the network runs on the training mesh (test inputs copied to its nodes, which are
  nodes of the fine mesh) and its columns are interpolated to the fine mesh field by field
  (``data.test_network_mesh = "train"``, :class:`femoe.train.task.NetworkOnMesh`).

In both the constraint rows, the tendencies and the solved streamfunction are the fine mesh's.
``--methods pihc moe`` also puts the MoE's experts (``[experts]``; ``--set experts.overlap=1`` for
overlapping ones) on the same network. ``--network-mesh`` with no value evaluates on the training
mesh only, which works for any config with a trained PI-HC run (e.g. diffusion-sorption). For each:
the test error, the best member of the span, and the solve time. Writes
``benchmarks/results/<name>_super_resolution.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from _common import apply_sets, command_line

    from femoe.train.config import config_from_dict, load_config
    from femoe.train.methods import build_method
    from femoe.train.run import evaluate
    from femoe.train.task import Task, transfer_method

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="problems/configs/ns_cpu_gnn_tend3.toml")
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--methods", nargs="+", default=["pihc"], help="methods evaluated on the PI-HC network (pihc, moe)")
    ap.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                    help="config overrides for the evaluation (TOML values), e.g. experts.overlap=2")
    ap.add_argument("--tag", default="", help="suffix of the JSON file's name")
    ap.add_argument("--run", help="results/<run>/pihc holds the network (default: the config's name; e.g. "
                    "<name>_s1 for a seed of benchmarks/run_seeds.py)")
    ap.add_argument("--network-mesh", nargs="*", default=["test", "train"], choices=["test", "train"],
                    help="where the network runs for the test-mesh evaluation (none: the training mesh only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load_config(ROOT / args.config)
    run_name = args.run or base.name
    ckpt = ROOT / "results" / run_name / "pihc" / "checkpoint.pt"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} is missing: OMP_NUM_THREADS=1 femoe run {args.config}")
    out = {"command": command_line("ns_super_resolution.py"),
           "checkpoint": str(ckpt.relative_to(ROOT)), "test_params": dict(base.data.test_params),
           "load": os.getloadavg(), "passes": {}}
    for p in args.passes:
        d = base.to_dict()
        d["data"]["dir"] = str(ROOT / base.data_dir)
        d["network"]["tendency_passes"] = p
        apply_sets(d, args.set)
        task = Task(config_from_dict(d))
        fine = task.test_mesh_task() if args.network_mesh else None
        res = {}
        for name in args.methods:
            m = build_method(name, task)
            m.load_network(ckpt)
            runs = [("train mesh", task, m)]
            runs += [(f"test mesh, network on the {w} mesh", fine, transfer_method(m, fine, w)) for w in args.network_mesh]
            for label, t, meth in runs:
                t0 = time.perf_counter()
                with torch.no_grad():
                    ev = evaluate(t, meth, base.train.batch_size, train_until=base.train.train_until)
                seconds = time.perf_counter() - t0
                r = {"rel_l2": ev["rel_l2_mean"], "rel_l2_std": ev["rel_l2_std"],
                     "best_in_span": ev["best_in_span_mean"], "interface_jump": ev["interface_jump"],
                     "seconds": seconds}
                if ev.get("rel_l2_after_train_until_mean") is not None:  # data past train.train_until
                    r["rel_l2_after_train_until"] = ev["rel_l2_after_train_until_mean"]
                res[f"{name}: {label}"] = r
                late = (f", after train_until {r['rel_l2_after_train_until']:.4f}"
                        if "rel_l2_after_train_until" in r else "")
                print(f"passes {p}, {name}, {label}: {r['rel_l2']:.4f} (span {r['best_in_span']:.4f}{late}, "
                      f"{seconds:.1f} s)", flush=True)
        out["passes"][p] = res
    tag = ("" if args.methods == ["pihc"] else "_" + "_".join(args.methods)) + (f"_{args.tag}" if args.tag else "")
    path = ROOT / "benchmarks" / "results" / f"{run_name}_super_resolution{tag}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
