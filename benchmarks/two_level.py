"""Two-level experts against one solve and one-level experts, on a trained PI-HC network (issue 14).

    OMP_NUM_THREADS=1 python benchmarks/two_level.py problems/configs/ds_cpu.toml --run ds_cpu_s0

On the network of ``results/<run>/pihc/checkpoint.pt`` (``--run``, default the config's name),
without training again, the test error of:

- ``pihc``: the single least-squares solve (what the network was trained through);
- ``moe``: the config's one-level experts (``[experts]``: own rows, global boundary and initial
  rows, ``overlap``, ``time_windows``);
- ``two_level``: the same experts with ``coarse = true``: the single solve on the same basis, then
  every expert's correction on the DOFs it owns whose neighbours it owns
  (:class:`femoe.experts.HardConstraintMoE`, docs/concepts.md "Two-level experts");

for each number of experts in ``--k`` (default the config's). ``--set section.key=value`` (TOML
values) changes the config for the evaluation, e.g. ``'data.test_network_mesh="train"'`` or
``experts.time_windows=5``; ``--test-mesh test|train`` evaluates on the config's test mesh
(``data.test_params``) with the network running there or on the training mesh, interpolated
(:func:`femoe.train.task.transfer_method`). Every test sample is solved in batches of ``--batch`` (a large batch
makes every sample wait for the slowest solve). Reported per variant: the relative L2 error
(mean, std over the test samples; after ``train.train_until`` too, where set), ``||r(u)||`` of
the single solve's rows at the output (mean over samples: the objective two-level experts never
raise above PI-HC's), the RMS of the training loss's residual (``task.residual``), unconverged
solves and seconds. Writes
``benchmarks/results/<run>_two_level[_<tag>].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from femoe.layers._residuals import INITIAL  # noqa: E402

VARIANTS = ("pihc", "moe", "two_level")


def evaluate(task, m, batch: int, rows) -> dict:
    """Test error, residuals, unconverged count and time of method ``m`` in batches; ``rows`` is
    the single solve's layer, whose objective ``||r(u)||`` is measured at every variant's output."""
    until = task.cfg.train.train_until
    later = None if until is None else int(np.searchsorted(task.times, until, side="right"))
    errs, after, res, objective, unconverged = [], [], [], [], 0
    t0 = time.perf_counter()
    for s in range(0, task.test.inputs.shape[0], batch):
        inp = task.test.inputs[s:s + batch]
        ref = task.test.solutions[s:s + batch].double()
        with torch.no_grad():
            u, info = m(inp)
        params, u0 = task.layer_args(inp)
        errs.append(task.relative_l2(u, ref))
        if later is not None and later < u.shape[1]:
            after.append(task.relative_l2(u[:, later:].contiguous(), ref[:, later:].contiguous()))
        res.append(task.residual(u, params, u0).square().mean(1).sqrt())
        p = dict(params or {})
        if u0 is not None:
            p[INITIAL] = u0
        objective.append(torch.linalg.vector_norm(rows.model.residual(u, p), dim=1))
        unconverged += int(info.get("unconverged", 0))
    err = torch.cat(errs)
    out = {"rel_l2_mean": float(err.mean()), "rel_l2_std": float(err.std()) if err.numel() > 1 else 0.0,
           "rel_l2": err.tolist(), "loss_residual_rms": float(torch.cat(res).mean()),
           "rows_norm_mean": float(torch.cat(objective).mean()), "rows_norm": torch.cat(objective).tolist(), "unconverged": unconverged,
           "seconds_all_test_samples": time.perf_counter() - t0}
    if after:
        e = torch.cat(after)
        out["rel_l2_after_train_until_mean"] = float(e.mean())
        out["rel_l2_after_train_until_std"] = float(e.std()) if e.numel() > 1 else 0.0
    return out


def main() -> None:
    from _common import apply_sets, command_line, load, machine

    from femoe.train.config import config_from_dict, load_config
    from femoe.train.methods import build_method
    from femoe.train.task import Task, transfer_method

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--run", help="results/<run>/pihc holds the network (default: the config's name)")
    ap.add_argument("--k", nargs="+", type=int, help="numbers of experts (default: the config's)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                    help="config overrides for the evaluation (TOML values)")
    ap.add_argument("--test-mesh", choices=("test", "train"),
                    help="evaluate on the config's test mesh (data.test_params) instead of the training mesh, "
                         "the network running on the test mesh or on the training mesh, interpolated")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the JSON file's name")
    ap.add_argument("--results", default=str(ROOT / "results"), help="the folder holding <run>/ (default results/)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/<run>_two_level[_<tag>].json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load_config(ROOT / args.config)
    run = args.run or base.name
    ckpt = Path(args.results) / run / "pihc" / "checkpoint.pt"
    if not ckpt.is_file():
        sys.exit(f"{ckpt} is missing: train the config's PI-HC first (femoe run {args.config} --methods pihc)")
    d = base.to_dict()
    d["data"]["dir"] = str(base.data_dir if base.data_dir.is_absolute() else ROOT / base.data_dir)
    apply_sets(d, args.set)
    d["experts"]["loss"] = "stitched"  # evaluation only; the two-level config check asks for it
    command = command_line("two_level.py")
    out = {"command": command, "checkpoint": str(ckpt), "machine": machine(), "load_before": load(),
           "experts": {k: v for k, v in d["experts"].items() if k != "loss"},
           "test_mesh": (None if not args.test_mesh else {"test_params": d["data"]["test_params"],
                                                          "network_on": args.test_mesh}), "results": {}}
    ks = args.k or [d["experts"]["k"]]
    for k in ks:
        d["experts"]["k"] = k
        for variant in args.variants:
            if variant == "pihc" and k != ks[0]:
                continue
            d["experts"]["coarse"] = variant == "two_level"
            d["methods"] = ["pihc" if variant == "pihc" else "moe"]
            task = Task(config_from_dict(d))
            m = build_method(d["methods"][0], task)
            m.load_network(ckpt)
            if args.test_mesh:
                task = task.test_mesh_task()
                m = transfer_method(m, task, args.test_mesh)
            m.eval()
            rows = build_method("pihc", task).layer  # the single solve's rows: every variant's yardstick
            r = evaluate(task, m, args.batch, rows)
            name = variant if variant == "pihc" else f"{variant}_k{k}"
            out["results"][name] = r
            extra = (f", after train_until {r['rel_l2_after_train_until_mean']:.4f}"
                     if "rel_l2_after_train_until_mean" in r else "")
            print(f"{name}: rel L2 {r['rel_l2_mean']:.4f}{extra}, ||r|| {r['rows_norm_mean']:.4e}, "
                  f"unconverged {r['unconverged']}, {r['seconds_all_test_samples']:.1f} s", flush=True)
    out["load_after"] = load()
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{run}_two_level{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
