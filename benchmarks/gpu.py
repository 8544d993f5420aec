"""Everything GPU-related in one prepared run (a few minutes), for a machine with an H100/H200.

Writes JSON (default benchmarks/results/gpu.json, or $OUT/gpu.json when $OUT is set) with the
GPU's name and:

1. constraint forward + backward throughput (constrained DOFs per second), GPU against CPU in
   the same run, for PI-HC and patch mode on diffusion-sorption trajectories;
2. PI-HC-MoE against PI-HC time per training step on the GPU, K in {1, 4, 16, 64}, from ~1e4
   up to >= 1e6 constrained DOFs (n_cells x levels);
3. peak GPU memory per configuration and per expert;
4. the largest diffusion-sorption trajectory batch that fits (doubling n_cells until OOM).

    python benchmarks/gpu.py [--budget-s 420] [--quick]

Then on the GPU machine also run: python -m pytest -m gpu tests/test_gpu.py
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
from problems import get_problem  # noqa: E402

F64 = torch.float64
T_END = 500.0


def ds(n_cells: int, levels: int):
    return get_problem("diffusion_sorption_1d").build(n_cells=n_cells, n_saved=levels, substeps=8)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_time(layer, x, u0, device, repeat=2) -> float:
    """Best time of forward + backward (loss = mean square of the output); the first call warms up."""
    best = float("inf")
    for _ in range(repeat + 1):
        xd = x.detach().to(device).requires_grad_(True)
        sync(device)
        t = time.perf_counter()
        u, _ = layer(xd, u0=u0.to(device))
        u.square().mean().backward()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main(budget_s: float, quick: bool) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device")
    start = time.perf_counter()
    out = {"machine": machine(), "gpu": torch.cuda.get_device_name(0), "throughput": [], "moe": [], "largest": None}
    N, batch = 16, 4
    g = torch.Generator().manual_seed(0)
    # 1. GPU vs CPU throughput
    for n_cells, levels in ([(256, 21)] if quick else [(256, 21), (1024, 101)]):
        p = ds(n_cells, levels)
        dt = T_END / (levels - 1)
        B = 0.1 * torch.randn(batch, levels, p.n, N, dtype=F64, generator=g)
        U = 0.1 + 0.01 * torch.randn(batch, levels, p.n, dtype=F64, generator=g)
        u0 = torch.full((batch, p.n), 0.1, dtype=F64)
        row = {"n_cells": n_cells, "levels": levels, "constrained_dofs": p.n * levels, "batch": batch, "N": N}
        for name, make, x in (("pihc", lambda: HardConstraint(p, dt=dt, tol=1e-8), B),
                              ("patch", lambda: PatchConstraint(p, 4, partition="slab", dt=dt), U)):
            layer = make()
            for dev in ("cpu", "cuda"):
                s = step_time(layer, x, u0, dev, repeat=1 if dev == "cpu" else 2)
                row[f"{name}_{dev}_s"] = s
                row[f"{name}_{dev}_dofs_per_s"] = batch * p.n * levels / s
            row[f"{name}_gpu_speedup"] = row[f"{name}_cpu_s"] / row[f"{name}_cuda_s"]
        out["throughput"].append(row)
        print(json.dumps(row), flush=True)
    # 2-3. MoE vs PI-HC on the GPU, memory per expert
    sizes = [(128, 101), (1024, 101), (4096, 251)] if not quick else [(128, 101), (1024, 101)]
    for n_cells, levels in sizes:
        if time.perf_counter() - start > budget_s:
            out["stopped_early"] = "time budget"
            break
        p = ds(n_cells, levels)
        dt = T_END / (levels - 1)
        bsz = batch if p.n * levels < 5e5 else 1
        B = 0.1 * torch.randn(bsz, levels, p.n, N, dtype=F64, generator=g)
        u0 = torch.full((bsz, p.n), 0.1, dtype=F64)
        row = {"n_cells": n_cells, "levels": levels, "constrained_dofs": p.n * levels, "batch": bsz}
        for K in (None, 1, 4, 16, 64):
            name = "pihc" if K is None else f"moe{K}"
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                layer = HardConstraint(p, dt=dt, tol=1e-8) if K is None else \
                    HardConstraintMoE(p, K, partition="slab", dt=dt, tol=1e-8)
                s = step_time(layer, B, u0, "cuda", repeat=1)
                with torch.no_grad():
                    sync("cuda")
                    t = time.perf_counter()
                    layer(B.cuda(), u0=u0.cuda())
                    sync("cuda")
                    inf = time.perf_counter() - t
                mem = torch.cuda.max_memory_allocated() / 2**20
                row[name] = {"step_s": s, "inference_s": inf, "peak_mib": mem,
                             "peak_mib_per_expert": mem / (K or 1)}
            except torch.cuda.OutOfMemoryError as exc:
                row[name] = {"oom": str(exc).splitlines()[0]}
        for K in (1, 4, 16, 64):
            if "step_s" in row.get(f"moe{K}", {}) and "step_s" in row["pihc"]:
                row[f"speedup_moe{K}"] = row["pihc"]["step_s"] / row[f"moe{K}"]["step_s"]
        out["moe"].append(row)
        print(json.dumps(row), flush=True)
    # 4. largest trajectory that fits (PI-HC-MoE, K = 16, batch 1, 101 levels)
    n_cells = 1024
    while time.perf_counter() - start < budget_s:
        try:
            p = ds(n_cells, 101)
            B = 0.1 * torch.randn(1, 101, p.n, N, dtype=F64, device="cuda")
            layer = HardConstraintMoE(p, 16, partition="slab", dt=5.0, tol=1e-8)
            torch.cuda.reset_peak_memory_stats()
            s = step_time(layer, B, torch.full((1, p.n), 0.1, dtype=F64), "cuda", repeat=0)
            out["largest"] = {"n_cells": n_cells, "constrained_dofs": p.n * 101, "step_s": s,
                              "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
            print(json.dumps(out["largest"]), flush=True)
            n_cells *= 2
        except torch.cuda.OutOfMemoryError:
            out["largest_oom_at_n_cells"] = n_cells
            break
    dest = Path(os.environ.get("OUT", Path(__file__).resolve().parent / "results")) / "gpu.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2, default=float))
    print("wrote", dest)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    main(a.budget_s, a.quick)
