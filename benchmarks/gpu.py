"""Everything GPU-related in one prepared run (a few minutes), for a machine with an H100/H200.

Writes JSON ($OUT/gpu.json when $OUT is set, else benchmarks/results/gpu.json) with the device's
name and, each section under the time budget:

1. ``throughput``: PI-HC and patch-mode forward + backward per training step, GPU against the
   CPU in the same run, at the ``ds_cpu`` size (129 DOFs x 51 levels) and the paper's grid
   (1,024 x 101), batch 4, N = 16;
2. ``patch_large``: patch mode forward + backward on a steady nonlinear 2D problem at ~1e5
   and ~1e6 DOFs (target: <= 0.5 s at 1e6 on an H200);
3. ``points``: PI-HC against PI-HC-MoE (K = 4) per step as the constrained rows grow from
   ~1e2 to ~1e5 (the paper's figure), with peak memory;
4. ``largest``: the largest diffusion-sorption trajectory (MoE, K = 16, batch 1) that fits.

    python benchmarks/gpu.py [--budget-s 420] [--quick]
    python benchmarks/gpu.py --dry-run      # tiny sizes with the CPU standing in for the GPU:
                                            # checks the script itself before a GPU lease

Run the whole GPU session with benchmarks/gpu_session.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine  # noqa: E402

from femoe.experts import HardConstraintMoE, PatchConstraint  # noqa: E402
from femoe.layers import HardConstraint  # noqa: E402
from femoe.problems import get_problem  # noqa: E402

F64 = torch.float64
T_END = 500.0


def ds(n_cells: int, levels: int):
    return get_problem("diffusion_sorption_1d").build(n_cells=n_cells, n_saved=levels, substeps=8)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None


def step_time(layer, x, u0, device, repeat=2) -> float:
    """Best time of forward + backward (loss = mean square of the output); the first call warms up."""
    best = float("inf")
    for _ in range(repeat + 1):
        xd = x.detach().to(device).requires_grad_(True)
        sync(device)
        t = time.perf_counter()
        u, _ = layer(xd, u0=u0.to(device)) if u0 is not None else layer(xd)
        u.square().mean().backward()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def nonlinear_2d(refine: int):
    """``-div((1 + u^2) grad u) = 1`` on the unit square, P1, ``u = 0`` on the boundary."""
    import skfem as fe

    from femoe.helpers import dot, grad
    from femoe.problem import Problem

    mesh = fe.MeshTri().refined(refine).with_defaults()
    return Problem(fe.Basis(mesh, fe.ElementTriP1()),
                   lambda u, v, w: dot((1 + u**2) * grad(u), grad(v)) - v,
                   dirichlet={"left": 0.0, "right": 0.0, "top": 0.0, "bottom": 0.0})


def main(budget_s: float, quick: bool, dry_run: bool = False) -> dict:
    if dry_run:
        dev, quick = "cpu", True
    elif torch.cuda.is_available():
        dev = "cuda"
    else:
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (or --dry-run to check the script on the CPU)")
    start = time.perf_counter()
    left = lambda: budget_s - (time.perf_counter() - start)  # noqa: E731
    out = {"machine": machine(), "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)",
           "throughput": [], "patch_large": [], "points": [], "largest": None}
    N, batch = 16, 4
    g = torch.Generator().manual_seed(0)
    # 1. GPU vs CPU per step, ds_cpu size and the paper's grid
    for n_cells, levels in ([(32, 6)] if dry_run else [(128, 51)] if quick else [(128, 51), (1024, 101)]):
        p = ds(n_cells, levels)
        dt = T_END / (levels - 1)
        B = 0.1 * torch.randn(batch, levels, p.n, N, dtype=F64, generator=g)
        U = 0.1 + 0.01 * torch.randn(batch, levels, p.n, dtype=F64, generator=g)
        u0 = torch.full((batch, p.n), 0.1, dtype=F64)
        row = {"n_cells": n_cells, "levels": levels, "constrained_dofs": p.n * levels, "batch": batch, "N": N,
               "cpu_threads": torch.get_num_threads()}
        for name, make, x in (("pihc", lambda: HardConstraint(p, dt=dt, tol=1e-8), B),
                              ("moe4", lambda: HardConstraintMoE(p, 4, partition="slab", dt=dt, tol=1e-8), B),
                              ("patch", lambda: PatchConstraint(p, 4, partition="slab", dt=dt), U)):
            layer = make()
            for label, d in (("cpu", "cpu"), ("gpu", dev)):
                # the CPU at the paper's grid is timed once (patch mode takes ~30 s a call there)
                rep = (0 if n_cells >= 1024 else 1) if label == "cpu" else 2
                row[f"{name}_{label}_s"] = step_time(layer, x, u0, d, repeat=rep)
            row[f"{name}_gpu_speedup"] = row[f"{name}_cpu_s"] / row[f"{name}_gpu_s"]
        out["throughput"].append(row)
        print(json.dumps(row), flush=True)
    # 2. patch mode at 1e5 and 1e6 DOFs
    for refine in ([3] if dry_run else [8, 10]):  # 2^r + 1 squared nodes: 66k, 1.05M
        if left() < 30:
            out["stopped_early"] = "time budget (patch_large)"
            break
        t = time.perf_counter()
        p = nonlinear_2d(refine)
        K = 4 if dry_run else 64
        U = 0.01 * torch.randn(1, p.n, dtype=F64, generator=g)
        row = {"dofs": p.n, "K": K, "problem_setup_s": time.perf_counter() - t}
        try:
            t = time.perf_counter()
            layer = PatchConstraint(p, K, partition="metis" if not dry_run else "rcb")
            row["layer_setup_s"] = time.perf_counter() - t
            reset_peak(dev)
            row["step_s"] = step_time(layer, U, None, dev, repeat=1)
            row["peak_mib"] = peak_mib(dev)
        except torch.cuda.OutOfMemoryError as exc:
            row["oom"] = str(exc).splitlines()[0]
        out["patch_large"].append(row)
        print(json.dumps(row), flush=True)
    # 3. PI-HC vs MoE as the constrained rows grow (the paper: 1e2 .. 1e5 sampled points)
    for n_cells, levels in ([(8, 3), (32, 6)] if dry_run else [(16, 6), (64, 16), (256, 41), (1024, 101)]):
        if left() < 30:
            out["stopped_early"] = "time budget (points)"
            break
        p = ds(n_cells, levels)
        dt = T_END / (levels - 1)
        B = 0.1 * torch.randn(batch, levels, p.n, N, dtype=F64, generator=g)
        u0 = torch.full((batch, p.n), 0.1, dtype=F64)
        row = {"n_cells": n_cells, "levels": levels, "rows": p.n * levels, "batch": batch}
        for name, make in (("pihc", lambda: HardConstraint(p, dt=dt, tol=1e-8)),
                           ("moe4", lambda: HardConstraintMoE(p, 4, partition="slab", dt=dt, tol=1e-8))):
            try:
                layer = make()
                reset_peak(dev)
                s = step_time(layer, B, u0, dev, repeat=1)
                with torch.no_grad():
                    sync(dev)
                    t = time.perf_counter()
                    layer(B.to(dev), u0=u0.to(dev))
                    sync(dev)
                    inf = time.perf_counter() - t
                row[name] = {"step_s": s, "inference_s": inf, "peak_mib": peak_mib(dev)}
            except torch.cuda.OutOfMemoryError as exc:
                row[name] = {"oom": str(exc).splitlines()[0]}
        if "step_s" in row["pihc"] and "step_s" in row["moe4"]:
            row["moe_speedup"] = row["pihc"]["step_s"] / row["moe4"]["step_s"]
        out["points"].append(row)
        print(json.dumps(row), flush=True)
    # 4. largest trajectory that fits (PI-HC-MoE, K = 16, batch 1, 101 levels)
    n_cells = 16 if dry_run else 1024
    while left() > 30 and not (dry_run and out["largest"]):
        try:
            p = ds(n_cells, 101 if not dry_run else 6)
            levels = 101 if not dry_run else 6
            B = 0.1 * torch.randn(1, levels, p.n, N, dtype=F64, device=dev)
            layer = HardConstraintMoE(p, 16 if not dry_run else 2, partition="slab", dt=T_END / (levels - 1), tol=1e-8)
            reset_peak(dev)
            s = step_time(layer, B, torch.full((1, p.n), 0.1, dtype=F64), dev, repeat=0)
            out["largest"] = {"n_cells": n_cells, "constrained_dofs": p.n * levels, "step_s": s, "peak_mib": peak_mib(dev)}
            print(json.dumps(out["largest"]), flush=True)
            n_cells *= 2
        except torch.cuda.OutOfMemoryError:
            out["largest_oom_at_n_cells"] = n_cells
            break
    out["wall_s"] = time.perf_counter() - start
    dest = Path(os.environ.get("OUT", Path(__file__).resolve().parent / "results")) / \
        ("gpu_dry_run.json" if dry_run else "gpu.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2, default=float))
    print("wrote", dest)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, CPU in place of the GPU")
    a = ap.parse_args()
    main(a.budget_s, a.quick, a.dry_run)
