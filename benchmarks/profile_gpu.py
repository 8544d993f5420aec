"""Where a PI-HC / PI-HC-MoE training step spends its time on a device (torch.profiler).

One forward + backward after a warm-up, at the paper's grid (1,024 cells x 101 levels, batch 4,
N = 16) unless ``--n-cells``/``--levels`` say otherwise; prints the top operators by self time
on the device and on the CPU (host overhead: Python, launches, synchronisations).

    python benchmarks/profile_gpu.py [--device cuda] [--n-cells 1024 --levels 101]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu import T_END, ds  # noqa: E402

from femoe.experts import HardConstraintMoE  # noqa: E402
from femoe.layers import HardConstraint  # noqa: E402


def main(device: str, n_cells: int, levels: int, rows: int) -> None:
    p = ds(n_cells, levels)
    dt = T_END / (levels - 1)
    g = torch.Generator().manual_seed(0)
    B = (0.1 * torch.randn(4, levels, p.n, 16, dtype=torch.float64, generator=g)).to(device)
    u0 = torch.full((4, p.n), 0.1, dtype=torch.float64, device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    for name, layer in (("pihc", HardConstraint(p, dt=dt, tol=1e-8)),
                        ("moe4", HardConstraintMoE(p, 4, partition="slab", dt=dt, tol=1e-8))):
        x = B.clone().requires_grad_(True)
        layer(x, u0=u0)[0].square().mean().backward()  # warm-up
        with profile(activities=acts) as prof:
            x = B.clone().requires_grad_(True)
            layer(x, u0=u0)[0].square().mean().backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        print(f"== {name} on {device}, {n_cells} cells x {levels} levels ==")
        key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=rows))
        if device.startswith("cuda"):
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-cells", type=int, default=1024)
    ap.add_argument("--levels", type=int, default=101)
    ap.add_argument("--rows", type=int, default=20)
    a = ap.parse_args()
    main(a.device, a.n_cells, a.levels, a.rows)
