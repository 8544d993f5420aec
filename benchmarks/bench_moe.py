"""PI-HC-MoE (femoe.experts.HardConstraintMoE) against PI-HC (femoe.layers.HardConstraint):
time per training step, peak memory and inference time against the number of experts K and
the number of constrained DOFs.

Cases (the same problem and the same constrained DOFs for both layers):

* ``ds``: time-dependent diffusion-sorption (``problems/diffusion_sorption_1d``), P1 on
  ``n_cells`` cells, ``n_saved`` levels; constrained DOFs = (n_cells + 1) * n_saved (every step's
  rows plus the initial-condition rows). Initial value constant per sample in [0, 0.2].
* ``2d``: steady quasilinear ``-div((1 + u^2) grad u) = f`` with zero Dirichlet data, P1 on
  ``skfem.MeshTri.init_tensor`` of the unit square (``side x side`` nodes), f per sample in
  [1, 10]; constrained DOFs = side^2.

Training step: a random basis B (batch x [levels x] n x N, N = 16) that requires grad stands in
for the network output; loss = mean(u^2); forward + backward of the layer. Inference: one
forward under ``torch.no_grad()``. Layer settings: library defaults (rho 1e-4, tol 1e-10, exact
Hessian, implicit backward) except ``maxiter`` (``--maxiter``, default 30, for both layers) so
that an expert that stagnates cannot stretch the run; iterations and convergence are recorded.

Every (size, layer) runs in a fresh subprocess: setup, one training step (timed; peak memory),
a second training step (timed), one inference forward (timed). Time per step = the faster of the
two steps. Within a size the layers run back to back in the order PI-HC, K = 1 .. 32, PI-HC, so
the two PI-HC runs bracket the MoE runs: speed-up = mean PI-HC time / MoE time, and the spread of
the two PI-HC times says how much the shared machine drifted meanwhile.

Memory: peak resident set size during the first training step minus the resident size just
before it (Linux: the high-water mark VmHWM is reset through /proc/self/clear_refs, after
gc + malloc_trim; glibc told to return blocks >= 64 KiB to the OS). It counts torch's tensor
storage and everything else; it excludes B, the setup and the imports.

Writes benchmarks/results/moe.json and benchmarks/results/moe_time_per_step.png (``--name``
changes the stem: the beyond-the-memory-wall sizes are ``--name moe_scale``).

    python benchmarks/bench_moe.py                 # default, ~8 minutes on 2 slow cores
    python benchmarks/bench_moe.py --ds 100x11 1000x11 1000x101 --sides 32 100 317 --batch-large 2
    python benchmarks/bench_moe.py --name moe_scale --ds 990x101 9900x101 --sides --K 4 --batch-large 6 --large 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command_line, write  # noqa: E402

logger = logging.getLogger("bench_moe")

MEMORY_METHOD = ("peak RSS during the first forward+backward minus RSS just before it (VmHWM reset via "
                 "/proc/self/clear_refs after gc + malloc_trim(0); MALLOC_MMAP_THRESHOLD_=65536), fresh "
                 "subprocess per (size, layer); B, setup and imports excluded")


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _build(case: str, size: str, batch: int, N: int):
    """(problem, layer kwargs, B, call kwargs, constrained DOFs)."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    if case == "ds":
        from femoe.problems import get_problem

        n_cells, n_saved = map(int, size.split("x"))
        problem = get_problem("diffusion_sorption_1d").build(n_cells=n_cells, n_saved=n_saved)
        n = problem.n
        B = torch.randn(batch, n_saved, n, N, dtype=torch.float64, generator=g)
        u0 = (0.2 * torch.rand(batch, 1, dtype=torch.float64, generator=g)).expand(batch, n).contiguous()
        return problem, {"dt": 500.0 / (n_saved - 1)}, B, {"u0": u0}, n * n_saved
    import skfem as fe

    from femoe.helpers import dot, grad
    from femoe.problem import Problem

    side = int(size)
    x = np.linspace(0, 1, side)
    mesh = fe.MeshTri.init_tensor(x, x).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())

    def form(u, v, w):
        return dot((1 + u**2) * grad(u), grad(v)) - w.f * v

    problem = Problem(basis, form, dirichlet={k: 0.0 for k in ("left", "right", "top", "bottom")},
                      defaults={"f": 1.0})
    B = torch.randn(batch, problem.n, N, dtype=torch.float64, generator=g)
    f = torch.linspace(1.0, 10.0, batch, dtype=torch.float64)
    return problem, {}, B, {"params": {"f": f}}, problem.n


def worker(case: str, size: str, K: int, batch: int, N: int, maxiter: int, steps: int) -> dict:
    import torch

    from femoe.experts import HardConstraintMoE
    from femoe.layers import HardConstraint

    problem, lkw, B, ckw, dofs = _build(case, size, batch, N)
    t = time.perf_counter()
    layer = HardConstraint(problem, maxiter=maxiter, **lkw) if K == 0 else \
        HardConstraintMoE(problem, K, maxiter=maxiter, **lkw)
    setup = time.perf_counter() - t
    B.requires_grad_(True)
    times, peak = [], float("nan")
    for s in range(steps):
        B.grad = None
        if s == 0:
            _trim()
            Path("/proc/self/clear_refs").write_text("5")
            before = _kib("VmRSS")
        t = time.perf_counter()
        u, info = layer(B, **ckw)
        (u * u).mean().backward()
        times.append(time.perf_counter() - t)
        if s == 0:
            peak = (_kib("VmHWM") - before) / 1024
        del u
    with torch.no_grad():
        t = time.perf_counter()
        _, inf_info = layer(B.detach(), **ckw)
        t_inf = time.perf_counter() - t
    its = info.iterations
    return dict(case=case, size=size, K=K, layer="PI-HC" if K == 0 else "PI-HC-MoE", constrained_dofs=dofs,
                n=problem.n, batch=batch, N=N, setup_s=setup, step_s=min(times), step_times_s=times,
                inference_s=t_inf, peak_mib=peak, lm_iterations_max=int(its.max()),
                lm_iterations_mean=float(its.double().mean()), converged_fraction=float(info.converged.double().mean()),
                interface_jump=float(info.interface_jump.max()) if K else 0.0)


def run_size(case: str, size: str, Ks: list[int], batch: int, N: int, maxiter: int, steps: int) -> list[dict]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    for K in [0, *Ks, 0]:
        cmd = [sys.executable, __file__, "--worker", case, size, str(K), "--batch", str(batch), "--N", str(N),
               "--maxiter", str(maxiter), "--steps", str(steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"worker {case} {size} K={K} failed:\n{out.stderr[-4000:]}")
        row = json.loads(out.stdout.rsplit("RESULT ", 1)[1])
        rows.append(row)
        logger.info("%s %s (%d DOFs, batch %d) %s K=%d: step %.3f s, inference %.3f s, peak %.0f MiB, LM its max %d, "
                    "converged %.2f", case, size, row["constrained_dofs"], batch, row["layer"], K, row["step_s"],
                    row["inference_s"], row["peak_mib"], row["lm_iterations_max"], row["converged_fraction"])
    pihc = [rows[0], rows[-1]]
    ref_step = sum(r["step_s"] for r in pihc) / 2
    ref_inf = sum(r["inference_s"] for r in pihc) / 2
    ref_mem = max(r["peak_mib"] for r in pihc)
    for r in rows[1:-1]:
        r["speedup_step"] = ref_step / r["step_s"]
        r["speedup_inference"] = ref_inf / r["inference_s"]
        r["memory_ratio_moe_over_pihc"] = r["peak_mib"] / max(ref_mem, 1e-9)
        r["pihc_step_s_bracket"] = [p["step_s"] for p in pihc]
    rows[-1]["repeat_of_pihc"] = True
    return rows


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in ("ds", "2d") if any(r["case"] == c for r in results)]
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.5), squeeze=False)
    titles = {"ds": "diffusion-sorption 1D (time-dependent)", "2d": "2D quasilinear (steady)"}
    for ax, case in zip(axes[0], cases):
        rows = [r for r in results if r["case"] == case and not r.get("repeat_of_pihc")]
        for K in sorted({r["K"] for r in rows}):
            sel = sorted((r for r in rows if r["K"] == K), key=lambda r: r["constrained_dofs"])
            ax.loglog([r["constrained_dofs"] for r in sel], [r["step_s"] for r in sel],
                      "k--o" if K == 0 else "-o", label="PI-HC" if K == 0 else f"MoE K={K}")
        ax.set_xlabel("constrained DOFs")
        ax.set_ylabel("time per training step [s]")
        ax.set_title(titles[case])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ds", nargs="*", default=["100x11", "300x11", "1000x11"],
                    help="diffusion-sorption sizes n_cellsxn_saved")
    ap.add_argument("--sides", nargs="*", default=["32", "71", "100"], help="2D mesh sides (side^2 DOFs)")
    ap.add_argument("--K", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--N", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batch-large", type=int, default=2, help="batch at and above --large DOFs")
    ap.add_argument("--large", type=int, default=10000)
    ap.add_argument("--maxiter", type=int, default=30)
    ap.add_argument("--steps", type=int, default=2, help="training steps per subprocess (time = fastest)")
    ap.add_argument("--name", default="moe", help="results name: benchmarks/results/<name>.json and "
                    "<name>_time_per_step.png (default moe)")
    ap.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.worker is not None:
        import warnings

        warnings.simplefilter("ignore")
        case, size, K = args.worker
        row = worker(case, size, int(K), args.batch, args.N, args.maxiter, args.steps)
        sys.stdout.write("\nRESULT " + json.dumps(row) + "\n")
        return
    t0 = time.perf_counter()
    results = []
    for case, sizes in (("ds", args.ds), ("2d", args.sides)):
        for size in sizes:
            dofs = (int(size.split("x")[0]) + 1) * int(size.split("x")[1]) if case == "ds" else int(size) ** 2
            batch = args.batch_large if dofs >= args.large else args.batch
            results += run_size(case, size, args.K, batch, args.N, args.maxiter, args.steps)
    png = RESULTS / f"{args.name}_time_per_step.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, png)
    path = write(args.name, dict(
        command=command_line("bench_moe.py", argv, env=""),
        benchmark="PI-HC-MoE vs PI-HC: time per training step (forward+backward), inference, peak memory",
        cases={"ds": "diffusion_sorption_1d, constrained DOFs = (n_cells+1) * n_saved, spatial experts (METIS/auto)",
               "2d": "-div((1+u^2) grad u) = f, zero Dirichlet, MeshTri.init_tensor side x side, P1"},
        N=args.N, batch=args.batch, batch_large=args.batch_large, batch_large_from_dofs=args.large,
        layer_settings=dict(rho=1e-4, tol=1e-10, maxiter=args.maxiter, hessian="exact", backward="implicit"),
        loss="mean(u^2)", memory_method=MEMORY_METHOD,
        timing=(f"fresh subprocess per (size, layer), {args.steps} training steps, time = fastest; order PI-HC, "
                "K..., PI-HC; speed-up = mean of the two PI-HC times / MoE time"),
        wall_seconds=time.perf_counter() - t0, plot=png.name, results=results))
    logger.info("wrote %s and %s (%.0f s)", path, png, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
