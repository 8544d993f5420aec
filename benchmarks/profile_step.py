"""Profile one training step (forward + backward + optimiser step) of each method (issue 11).

``OMP_NUM_THREADS=1 python benchmarks/profile_step.py [--config problems/configs/ds_cpu.toml]
[--steps 5] [--profile-steps 2] [--trained results/ds_cpu_s0]``

With ``--trained`` every method starts from the network that run trained (the step cost late in
training, where the least-squares solves start close to their answer), and the JSON is
``profile_step_trained.json``.

At the size of the config (default ``ds_cpu``: 128 cells, 51 levels, its batch size and basis
size N), for soft, PI-HC, PI-HC-MoE and patch mode:

* seconds per step: the median of ``--steps`` timed steps after one warm-up step, each step the
  trainer's own (``zero_grad``, :func:`femoe.train.trainer.loss_of`, ``backward``, gradient
  clipping, ``opt.step``) on the config's batch size;
* a cProfile of ``--profile-steps`` further steps: the top 15 functions by cumulative and by
  internal ("total") time, with file:line;
* the ratios PI-HC / soft, MoE / PI-HC and patch / soft from these medians (one run, one
  process);
* the machine load (``os.getloadavg``) before and after each method: the machine is shared, so
  absolute seconds are pessimistic; the ratios are what to compare.

The training data are a small set generated for the profile (8 training samples of the
config's problem, seed 0) in a temporary folder: the step cost does not depend on them.
Writes ``benchmarks/results/profile_step.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import load, training_step  # noqa: E402  (benchmarks/ is not a package)


def _git_state() -> dict:
    """The commit measured and the files under femoe/ and problems/ that differ from it (the
    working tree is shared: uncommitted edits are part of what was measured)."""
    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"head": git("rev-parse", "--short", "HEAD"),
            "uncommitted": [line[3:] for line in git("status", "--short", "--", "femoe", "problems").splitlines()]}


def _where(key) -> str:
    file, line, name = key
    try:
        file = str(Path(file).resolve().relative_to(ROOT))
    except ValueError:
        if "site-packages/" in file:
            file = file.split("site-packages/", 1)[1]
    return f"{file}:{line}({name})"


def _top(stats: pstats.Stats, key: str, n: int = 15) -> list[dict]:
    stats.sort_stats(key)
    rows = []
    for func in stats.fcn_list[:n]:
        cc, nc, tt, ct, _ = stats.stats[func]
        rows.append({"function": _where(func), "calls": nc, "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
    return rows


def main() -> None:
    import torch

    from femoe.train.config import load_config
    from femoe.train.task import Task
    from femoe.train.trainer import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "problems/configs/ds_cpu.toml"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    parser.add_argument("--profile-steps", type=int, default=2, help="cProfile'd steps per method")
    parser.add_argument("--methods", default="soft,pihc,moe,patch")
    parser.add_argument("--trained", metavar="RUN_DIR",
                        help="start each method from the network a run trained (RUN_DIR/<method>/checkpoint.pt, "
                             "e.g. results/ds_cpu_s0): the step cost at the end of training, not the first steps")
    parser.add_argument("--out", help="JSON (default benchmarks/results/profile_step.json, or "
                                      "profile_step_trained.json with --trained)")
    args = parser.parse_args()
    if args.out is None:
        args.out = str(HERE / "results" / ("profile_step_trained.json" if args.trained else "profile_step.json"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    cfg = load_config(args.config)
    tmp = tempfile.TemporaryDirectory()
    cfg.data.dir = str(Path(tmp.name) / "data")
    cfg.results = str(Path(tmp.name) / "results")
    cfg.data.n_train, cfg.data.n_test, cfg.data.workers = 8, 1, 1
    t0 = time.perf_counter()
    task = Task(cfg)
    data_seconds = time.perf_counter() - t0
    tc = cfg.train
    batch = tc.batch_size
    out = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/profile_step.py "
                   f"--config {Path(args.config).relative_to(ROOT) if Path(args.config).is_absolute() else args.config} "
                   f"--steps {args.steps} --profile-steps {args.profile_steps}"
                   + (f" --trained {args.trained}" if args.trained else ""),
        "trained": args.trained,
        "config": cfg.name, "problem": cfg.problem.name, "problem_params": cfg.problem.params,
        "n_dofs": task.n, "levels": task.n_levels if task.time_dependent else None, "batch_size": batch,
        "n_basis": cfg.network.n_basis, "experts": cfg.experts.k, "solver": vars(cfg.solver),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "data_generation_seconds_8_plus_1_samples": round(data_seconds, 2),
        "git": _git_state(), "load_at_start": load(), "methods": {},
    }
    for name in args.methods.split(","):
        trainer = Trainer(cfg, name, task)
        method = trainer.method
        if args.trained:
            method.load_network(Path(args.trained) / name / "checkpoint.pt")
        method.train()
        inputs = task.train.inputs[:batch]
        sols = task.train.solutions[:batch]

        step = training_step(trainer, inputs, sols)

        load0 = load()
        step()  # warm-up (factorisations, patterns, caches)
        times, infos = [], []
        for _ in range(args.steps):
            t = time.perf_counter()
            info = step()
            times.append(time.perf_counter() - t)
            infos.append({k: v for k, v in info.items() if isinstance(v, (int, float, bool))})
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        for _ in range(args.profile_steps):
            step()
        prof.disable()
        profiled = (time.perf_counter() - t) / max(1, args.profile_steps)
        stats = pstats.Stats(prof, stream=io.StringIO())
        out["methods"][name] = {
            "seconds_per_step_median": round(statistics.median(times), 4),
            "seconds_per_step_all": [round(x, 4) for x in times],
            "seconds_per_step_under_cprofile": round(profiled, 4),
            "step_info": infos[-1] if infos else {},
            "load_before": load0, "load_after": load(),
            "top_cumulative": _top(stats, "cumulative"),
            "top_total": _top(stats, "tottime"),
        }
        print(name, out["methods"][name]["seconds_per_step_median"], "s/step; load", load(), flush=True)
    m = {k: v["seconds_per_step_median"] for k, v in out["methods"].items()}
    ratios = {}
    if "soft" in m and "pihc" in m:
        ratios["pihc_over_soft"] = round(m["pihc"] / m["soft"], 2)
    if "moe" in m and "pihc" in m:
        ratios["moe_over_pihc"] = round(m["moe"] / m["pihc"], 2)
    if "patch" in m and "soft" in m:
        ratios["patch_over_soft"] = round(m["patch"] / m["soft"], 2)
    out["ratios"] = ratios
    out["load_at_end"] = load()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print("ratios", ratios)
    print("wrote", path)
    tmp.cleanup()


if __name__ == "__main__":
    main()
