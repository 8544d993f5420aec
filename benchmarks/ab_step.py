"""Training-step time of each method, this checkout against another commit, interleaved.

    OMP_NUM_THREADS=1 python benchmarks/ab_step.py --base 92ff878 [--config problems/configs/ds_cpu.toml]
        [--trained results/ds_cpu_s0] [--methods soft pihc moe patch] [--rounds 3] [--steps 5]
    python benchmarks/ab_step.py --summarise benchmarks/results/<file>.json   # summaries from its runs

The shared machine's load drifts, so two versions timed one after the other are not comparable.
Here the base commit is checked out in a temporary git worktree, and for every method the two
versions alternate, each in a fresh subprocess (base, head, base, head, ...; ``--rounds`` pairs):
a subprocess builds the config's trainer, loads the trained network of ``--trained`` (the step
cost late in training, where the solves start close to their answer), takes one warm-up step
and times ``--steps`` trainer steps (``_common.training_step``, as ``profile_step.py``) on the
first training batch; its time is the median step.
Per method and version the figure is the median over rounds; the ratios (base / head, and
PI-HC / soft, MoE / PI-HC, patch / soft per version) are from these medians. The same figures
from each subprocess's *mean* step (``seconds_per_step_mean``, ``ratios_by_mean``) count the slow
steps a median hides: one sample at the sorption term's kink can take 30 Levenberg-Marquardt
iterations where the others take 3, and a training run's time is the sum of its steps. The load
average is recorded before every subprocess.

Writes ``benchmarks/results/ab_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import command_line, load, training_step  # noqa: E402  (benchmarks/ is not a package)


def _worker(args) -> None:
    import torch

    from femoe.train.config import load_config
    from femoe.train.trainer import Trainer

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    trainer = Trainer(cfg, args.method)
    if args.trained:
        trainer.method.load_network(Path(args.trained) / args.method / "checkpoint.pt")
    trainer.method.train()
    b, train = cfg.train.batch_size, trainer.task.train
    step = training_step(trainer, train.inputs[:b], train.solutions[:b])
    step()  # warm-up (factorisations, patterns, caches)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        info = step()
        times.append(time.perf_counter() - t)
    print("RESULT " + json.dumps({"median": statistics.median(times), "times": times,
                                   "info": {k: float(v) for k, v in info.items()}}))


def _run(src: Path, args, method: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--method", method, "--config", args.config,
           "--steps", str(args.steps)] + (["--trained", args.trained] if args.trained else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src)}
    load_before = load()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{method} at {src} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][7:]), "load_before": load_before}


def summary(runs: dict) -> dict:
    """Per method and version the median over rounds of each run's median step and of its mean
    step, the speed-ups base / head and the ratios PI-HC / soft, MoE / PI-HC, patch / soft."""
    med = {m: {v: statistics.median(x["median"] for x in rs) for v, rs in d.items()} for m, d in runs.items()}
    mean = {m: {v: statistics.median(statistics.mean(x["times"]) for x in rs) for v, rs in d.items()}
            for m, d in runs.items()}

    def ratios(fig, v):
        return {f"{a}_over_{b}": fig[a][v] / fig[b][v]
                for a, b in (("pihc", "soft"), ("moe", "pihc"), ("patch", "soft")) if a in fig and b in fig}

    return {"seconds_per_step": med, "speedup_head_over_base": {m: d["base"] / d["head"] for m, d in med.items()},
            "ratios": {v: ratios(med, v) for v in ("base", "head")},
            "seconds_per_step_mean": mean,
            "speedup_head_over_base_by_mean": {m: d["base"] / d["head"] for m, d in mean.items()},
            "ratios_by_mean": {v: ratios(mean, v) for v in ("base", "head")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=False, help="the commit to compare with (git ref)")
    ap.add_argument("--config", default=str(ROOT / "problems/configs/ds_cpu.toml"))
    ap.add_argument("--trained", default=str(ROOT / "results/ds_cpu_s0"), help="run folder with <method>/checkpoint.pt "
                    "('' for untrained networks)")
    ap.add_argument("--methods", nargs="+", default=["soft", "pihc", "moe", "patch"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "ab_step.json"))
    ap.add_argument("--summarise", metavar="JSON", help="recompute the summaries of a written JSON from its runs "
                    "(files written before the mean-step figures were added) and exit")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.summarise:
        path = Path(args.summarise)
        doc = json.loads(path.read_text())
        runs = doc.pop("runs")
        doc.update(summary(runs))
        doc["runs"] = runs
        path.write_text(json.dumps(doc, indent=2))
        print(json.dumps(summary(runs), indent=1))
        return
    if not args.base:
        ap.error("--base is required")
    git = ["git", "-C", str(ROOT)]
    base_sha = subprocess.run(git + ["rev-parse", "--short", args.base], capture_output=True, text=True,
                              check=True).stdout.strip()
    head_sha = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--short", "--", "femoe", "problems"], capture_output=True,
                           text=True).stdout.split("\n")
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "base"
        subprocess.run(git + ["worktree", "add", "--detach", str(wt), base_sha], check=True, capture_output=True)
        try:
            runs = {m: {"base": [], "head": []} for m in args.methods}
            for m in args.methods:
                for r in range(args.rounds):
                    for version, src in (("base", wt), ("head", ROOT)):
                        res = _run(src, args, m)
                        runs[m][version].append(res)
                        print(f"{m} round {r} {version}: {res['median']:.4f} s/step (load {res['load_before']})",
                              flush=True)
        finally:
            subprocess.run(git + ["worktree", "remove", "--force", str(wt)], capture_output=True)
    doc = {"command": command_line("ab_step.py"),
           "base": base_sha, "head": head_sha, "uncommitted_at_head": [ln[3:] for ln in dirty if ln.strip()],
           "config": args.config, "trained": args.trained, "steps": args.steps, "rounds": args.rounds,
           **summary(runs), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps(summary(runs), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
