"""PI-HC (femoe.layers.HardConstraint) forward + backward: time and peak memory against the basis
size N and the number of DOFs n, and the implicit against the unrolled backward.

Problem: P1 Poisson ``-lap u = f`` (or ``--problem quasilinear``: ``-div((1 + u^2) grad u) = f``)
with zero Dirichlet data on a structured triangle mesh of the unit square (``side x side`` nodes:
32, 100, 317 -> n ~ 1e3, 1e4, 1e5), all residual rows enforced, a random basis B
(batch x n x N) that requires grad, per-sample source f, loss ``sum(c * u)``. Defaults of the
layer (rho 1e-4, tol 1e-10, exact Hessian). One warm-up call, then the median of ``--repeat``
measured calls. The soft baseline (``soft_residual_loss`` of one field) is timed alongside.

Memory: peak resident set size of the process during the measured forward + backward, minus the
resident size just before it (Linux: the high-water mark VmHWM is reset through
/proc/self/clear_refs before the call). This counts every allocation, torch's included
(tracemalloc sees only Python's allocator and would miss tensor storage). Each mesh size runs in
a fresh subprocess.

Writes benchmarks/results/pihc.json.

    python benchmarks/bench_pihc.py [--sides 32 100 317] [--basis 8 16 32 64 128] [--batch 4]
        [--repeat 1] [--problem poisson|quasilinear]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

logger = logging.getLogger("bench_pihc")

MEMORY_METHOD = ("peak RSS during forward+backward minus RSS before it (VmHWM reset via /proc/self/clear_refs, "
                 "malloc_trim(0) before; glibc told to mmap blocks >= 64 KiB so freed tensors leave the RSS), "
                 "fresh subprocess per mesh size")


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the measurement is then an upper bound of retained memory
        pass


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(fn, memory: bool) -> tuple[float, float, float, object]:
    """(forward s, backward s, peak extra MiB or nan, info) of one call of ``fn() -> (loss, info, fwd_s)``."""
    if memory:
        _trim()
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    loss, info, t_fwd = fn()
    loss.backward()
    total = time.perf_counter() - t0
    peak = (_rss_kib("VmHWM") - before) / 1024 if memory else float("nan")
    return t_fwd, total - t_fwd, peak, info


def worker(side: int, basis_sizes: list[int], unrolled_sizes: list[int], batch: int, repeat: int,
           problem_name: str, memory: bool, threads: int) -> list[dict]:
    import numpy as np
    import skfem as fe
    import torch

    from femoe.helpers import dot, grad
    from femoe.layers import HardConstraint, soft_residual_loss
    from femoe.problem import Problem

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    x = np.linspace(0, 1, side)
    mesh = fe.MeshTri.init_tensor(x, x).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    zero = {k: 0.0 for k in ("left", "right", "top", "bottom")}
    if problem_name == "poisson":
        def form(u, v, w):
            return dot(grad(u), grad(v)) - w.f * v
    else:
        def form(u, v, w):
            return dot((1 + u**2) * grad(u), grad(v)) - w.f * v
    problem = Problem(basis, form, dirichlet=zero, defaults={"f": 1.0})
    n = problem.n
    c = torch.randn(batch, n, dtype=torch.float64)
    f = torch.linspace(1.0, 10.0, batch, dtype=torch.float64)
    rows = []
    modes = [("implicit", N) for N in basis_sizes] + [("unrolled", N) for N in unrolled_sizes]
    for mode, N in modes:
        t_setup = time.perf_counter()
        layer = HardConstraint(problem, backward=mode)
        setup = time.perf_counter() - t_setup
        B = torch.randn(batch, n, N, dtype=torch.float64, requires_grad=True)
        fp = f.clone().requires_grad_(True)

        def call():
            t = time.perf_counter()
            u, info = layer(B, {"f": fp})
            t_fwd = time.perf_counter() - t
            return (c * u).sum(), info, t_fwd

        _measure(call, memory)  # warm-up
        runs = []
        for _ in range(repeat):
            B.grad = None
            fp.grad = None
            runs.append(_measure(call, memory))
        t_fwd, t_bwd = (statistics.median(r[i] for r in runs) for i in (0, 1))
        peak, info = max(r[2] for r in runs), runs[-1][3]
        rows.append(dict(n=n, N=N, batch=batch, backward=mode, setup_s=setup, forward_s=t_fwd, backward_s=t_bwd,
                         total_s=t_fwd + t_bwd, peak_mib=peak, lm_iterations=info.iterations.tolist(),
                         converged=bool(info.all_converged)))
        logger.info("n=%d N=%d %s: fwd %.3f s, bwd %.3f s, peak %.1f MiB, LM iterations %s", n, N, mode, t_fwd,
                    t_bwd, peak, info.iterations.tolist())
    # soft-constraint baseline at this n: residual loss forward + backward of one field
    u_hat = torch.randn(batch, n, dtype=torch.float64, requires_grad=True)

    def soft():
        t = time.perf_counter()
        loss = soft_residual_loss(problem, u_hat, {"f": f})
        return loss, None, time.perf_counter() - t

    _measure(soft, memory)
    runs = [_measure(soft, memory) for _ in range(repeat)]
    t_fwd, t_bwd = (statistics.median(r[i] for r in runs) for i in (0, 1))
    peak = max(r[2] for r in runs)
    rows.append(dict(n=n, N=0, batch=batch, backward="soft", forward_s=t_fwd, backward_s=t_bwd,
                     total_s=t_fwd + t_bwd, peak_mib=peak))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[32, 100, 317])
    ap.add_argument("--basis", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--unrolled-basis", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--unrolled-max-side", type=int, default=100,
                    help="run the unrolled backward only up to this mesh side (its memory grows with iterations)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="measured calls per case (median time, max memory)")
    ap.add_argument("--problem", choices=["poisson", "quasilinear"], default="poisson",
                    help="P1 Poisson (linear) or -div((1 + u^2) grad u) = f (nonlinear)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/OpenMP threads per worker (1: stable timings on a shared machine, where "
                         "oversubscribed OpenMP threads spin and times vary 10-50x)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.worker is not None:
        unrolled = args.unrolled_basis if args.worker <= args.unrolled_max_side else []
        rows = worker(args.worker, args.basis, unrolled, args.batch, 1 if args.memory else args.repeat,
                      args.problem, args.memory, args.threads)
        sys.stdout.write("\nRESULT " + json.dumps(rows) + "\n")
        return
    results = []
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    for side in args.sides:
        cmd = [sys.executable, __file__, "--worker", str(side), "--batch", str(args.batch), "--repeat",
               str(args.repeat), "--problem", args.problem, "--threads", str(args.threads),
               "--unrolled-max-side", str(args.unrolled_max_side), "--basis", *map(str, args.basis),
               "--unrolled-basis", *map(str, args.unrolled_basis)]
        measured = {}
        # times with the default allocator; memory in a second process whose allocator returns
        # freed blocks to the OS (which slows it down, so its times are not used)
        threads = {"OMP_NUM_THREADS": str(args.threads)}
        for kind, extra, env in (("time", [], {**os.environ, **threads}),
                                 ("memory", ["--memory"],
                                  {**os.environ, **threads, "MALLOC_MMAP_THRESHOLD_": "65536"})):
            out = subprocess.run(cmd + extra, capture_output=True, text=True, check=False, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"{kind} worker for side {side} failed:\n{out.stderr[-4000:]}")
            logger.info("%s:\n%s", kind, "\n".join(l for l in out.stderr.splitlines() if l.startswith("n=")))
            measured[kind] = json.loads(out.stdout.rsplit("RESULT ", 1)[1])
        for row, mem in zip(measured["time"], measured["memory"]):
            row["peak_mib"] = mem["peak_mib"]
            results.append(row)
    ratios = []
    for r in results:
        if r["backward"] != "unrolled":
            continue
        imp = next(x for x in results if x["backward"] == "implicit" and x["n"] == r["n"] and x["N"] == r["N"])
        ratios.append(dict(n=r["n"], N=r["N"],
                           backward_time_unrolled_over_implicit=r["backward_s"] / imp["backward_s"],
                           total_time_unrolled_over_implicit=r["total_s"] / imp["total_s"],
                           peak_memory_unrolled_over_implicit=r["peak_mib"] / max(imp["peak_mib"], 1e-9)))
    soft = {x["n"]: x["total_s"] for x in results if x["backward"] == "soft"}
    for r in results:
        if r["backward"] == "implicit":
            r["total_over_soft"] = r["total_s"] / soft[r["n"]]
    name = "pihc" if args.problem == "poisson" else f"pihc_{args.problem}"
    path = write(name, dict(
        benchmark="PI-HC forward+backward vs N and n; implicit vs unrolled backward",
        problem=f"{args.problem} (P1), zero Dirichlet, structured MeshTri of the unit square, all rows enforced",
        batch=args.batch, threads=args.threads,
        load_average_1_5_15min=dict(before=load_before, after=os.getloadavg(), cpu_count=os.cpu_count()),
        layer_settings=dict(rho=1e-4, tol=1e-10, maxiter=100, hessian="exact", damping=1e-6),
        memory_method=MEMORY_METHOD,
        timing=f"one warm-up call, then the median of {args.repeat} measured calls (wall clock)",
        wall_seconds=time.perf_counter() - t0, results=results, ratios=ratios))
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
