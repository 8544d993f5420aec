"""PI-HC-MoE across ``torchrun`` processes: seconds per training step on 1 and on 2 CPU ranks.

    OMP_NUM_THREADS=1 python benchmarks/bench_torchrun.py [--size 1024x101] [--experts 4]
        [--batch 4] [--basis 16] [--steps 3] [--procs 1 2]

The parent launches ``torchrun --nproc-per-node P`` on this file for each ``P`` in ``--procs``
(gloo, one thread per rank). Every rank builds the same diffusion-sorption problem
(``problems/diffusion_sorption_1d`` at ``--size`` cells x levels), the same random basis ``B``
(batch x levels x n x N, seed 0, standing in for the network output) and initial values, all
from ``benchmarks/bench_moe.py``'s set-up and a :class:`~femoe.experts.HardConstraintMoE` with
``distributed=True`` for ``P > 1``: each rank solves its share of the experts (``femoe.experts.
distributed``). A step is the layer's forward, ``(u * u).mean().backward()`` and the gradient
all-reduce of ``sync_gradients``; time per step = the median of ``--steps`` steps after one
warm-up, measured on rank 0 after a barrier. The runs for the ``P`` values alternate
(``--repeat`` rounds), so a drifting load hits both; the speed-up is the ratio of the medians.
The machine load (``os.getloadavg``) is recorded before and after each run. The fields of both
runs must agree (max difference recorded): the ranks together compute the one-process field.

Writes ``benchmarks/results/torchrun.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import command_line, load  # noqa: E402  (benchmarks/ is not a package)


def _worker(args) -> None:
    import torch

    from bench_moe import _build

    from femoe.experts import HardConstraintMoE
    from femoe.experts import distributed as fdist

    torch.set_num_threads(1)
    rank, world = fdist.init("gloo")
    problem, lkw, B, ckw, _ = _build("ds", args.size, args.batch, args.basis)  # bench_moe's set-up
    u0 = ckw["u0"]
    layer = HardConstraintMoE(problem, args.experts, partition="slab", maxiter=args.maxiter, distributed=world > 1,
                              **lkw)
    B.requires_grad_(True)
    times, its = [], []
    for s in range(args.steps + 1):
        B.grad = None
        if world > 1:
            torch.distributed.barrier()
        t = time.perf_counter()
        u, info = layer(B, None, u0)
        (u * u).mean().backward()
        if world > 1:
            fdist.sync_gradients([B])
        if s:
            times.append(time.perf_counter() - t)
            its.append(float(info.iterations.double().mean()))
    if rank == 0:
        out = {"procs": world, "step_s": statistics.median(times), "step_times_s": times,
               "lm_iterations_mean": statistics.mean(its), "u": u.detach(), "grad": B.grad}
        torch.save(out, args.out)
    if world > 1:
        torch.distributed.destroy_process_group()


def _launch(P: int, args, out: Path) -> dict:
    import torch

    exe = shutil.which("torchrun")
    if exe is None:
        raise SystemExit("torchrun is not on PATH (it comes with torch)")
    cmd = [exe, "--standalone", f"--nproc-per-node={P}", str(Path(__file__).resolve()), "--worker",
           "--size", args.size, "--experts", str(args.experts), "--batch", str(args.batch), "--basis", str(args.basis),
           "--steps", str(args.steps), "--maxiter", str(args.maxiter), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    load0 = load()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"torchrun with {P} process(es) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = torch.load(out, weights_only=False)
    res["load_before"], res["load_after"] = load0, load()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1024x101", help="cells x levels of the diffusion-sorption problem")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--basis", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--maxiter", type=int, default=30)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2, help="rounds over --procs (alternating)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=str(HERE / "results" / "torchrun.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    from _common import machine

    runs: dict[int, list[dict]] = {P: [] for P in args.procs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for P in args.procs:
                res = _launch(P, args, Path(tmp) / f"p{P}_{r}.pt")
                runs[P].append(res)
                print(f"round {r}: {P} process(es) {res['step_s']:.3f} s/step; load {res['load_before']}", flush=True)
    ref = runs[args.procs[0]][0]
    med = {P: statistics.median(x["step_s"] for x in rs) for P, rs in runs.items()}
    doc = {
        "command": command_line("bench_torchrun.py"),
        "machine": machine(),
        "problem": {"name": "diffusion_sorption_1d", "size": args.size, "batch": args.batch, "N": args.basis,
                    "experts": args.experts, "partition": "slab", "maxiter": args.maxiter},
        "seconds_per_step": {str(P): med[P] for P in args.procs},
        "speedup_over_one_process": {str(P): med[args.procs[0]] / med[P] for P in args.procs},
        "max_field_difference": {str(P): float((rs[0]["u"] - ref["u"]).abs().max()) for P, rs in runs.items()},
        "max_gradient_difference": {str(P): float((rs[0]["grad"] - ref["grad"]).abs().max()) for P, rs in runs.items()},
        "runs": {str(P): [{k: v for k, v in x.items() if k not in ("u", "grad")} for x in rs] for P, rs in runs.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps({k: doc[k] for k in ("seconds_per_step", "speedup_over_one_process", "max_field_difference")}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
