"""Patch mode (femoe.experts.PatchConstraint) forward + backward against one global FEM solve of
the same problem.

Problem: steady quasilinear ``-div((1 + u^2) grad u) = f`` with zero Dirichlet data, P1 on
``skfem.MeshTri.init_tensor`` of the unit square (``side x side`` nodes: 100 -> 1e4 DOFs,
317 -> 1e5), f per sample in [1, 10] (requires grad).

* patch: ``PatchConstraint(problem, K)`` (library defaults: Newton, rtol = atol = 1e-10, linear
  solver "auto"), input a random field U_hat (batch x n, requires grad, 0.1 * N(0, 1)), loss
  mean(u^2), forward + backward (gradients to U_hat and f).
* global (differentiable): ``femoe.layers.nonlinear_solve`` of the whole problem for the same
  batch, loss mean(u^2), forward + backward (gradient to f; one adjoint solve per sample).
* global (reference): ``femoe.reference.solve`` per sample (forward only, numpy, SciPy), summed
  over the batch.

Every size runs in one process; the cases alternate (global, patch K..., global, reference)
and each is timed twice after a warm-up call (time = fastest; from ``--large`` DOFs once, without
warm-up), so that the ratios
time(patch) / time(global) come from the same stretch of the shared machine.

Writes benchmarks/results/patch.json.

    python benchmarks/bench_patch.py [--sides 100 317] [--K 4 16 64] [--batch 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

logger = logging.getLogger("bench_patch")


def _problem(side: int):
    import numpy as np
    import skfem as fe

    from femoe.helpers import dot, grad
    from femoe.problem import Problem

    x = np.linspace(0, 1, side)
    mesh = fe.MeshTri.init_tensor(x, x).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())

    def form(u, v, w):
        return dot((1 + u**2) * grad(u), grad(v)) - w.f * v

    return Problem(basis, form, dirichlet={k: 0.0 for k in ("left", "right", "top", "bottom")}, defaults={"f": 1.0})


def _best(fn, repeat: int, warmup: bool = True) -> tuple[float, list[float]]:
    if warmup:
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), ts


def run_side(side: int, Ks: list[int], batch: int, repeat: int, large: int) -> list[dict]:
    import torch

    from femoe.experts import PatchConstraint
    from femoe.layers import nonlinear_solve
    from femoe.reference import solve

    problem = _problem(side)
    n = problem.n
    g = torch.Generator().manual_seed(0)
    f = torch.linspace(1.0, 10.0, batch, dtype=torch.float64).requires_grad_(True)
    U = (0.1 * torch.randn(batch, n, dtype=torch.float64, generator=g)).requires_grad_(True)
    rows = []
    warm = n < large
    if not warm:
        repeat = 1

    def global_step():
        f.grad = None
        u = nonlinear_solve(problem, {"f": f})
        (u * u).mean().backward()

    def reference():
        for b in range(batch):
            solve(problem, {"f": float(f[b])})

    layers = {}
    for K in Ks:
        t = time.perf_counter()
        layers[K] = PatchConstraint(problem, K)
        layers[K].setup_s = time.perf_counter() - t

    def patch_step(K):
        def step():
            U.grad = None
            f.grad = None
            u, info = layers[K](U, {"f": f})
            (u * u).mean().backward()
            step.info = info
        return step

    order = [("global", None)] + [("patch", K) for K in Ks] + [("global", None), ("reference", None)]
    for kind, K in order:
        if kind == "global":
            best, ts = _best(global_step, repeat, warm)
        elif kind == "reference":
            best, ts = _best(reference, repeat, warm)
        else:
            fn = patch_step(K)
            best, ts = _best(fn, repeat, warm)
        row = dict(side=side, n=n, batch=batch, case=kind, K=K, time_s=best, times_s=ts)
        if kind == "patch":
            info = fn.info
            row.update(setup_s=layers[K].setup_s, newton_iterations_max=int(info.iterations.max()),
                       converged=bool(info.all_converged),
                       residual_interior_max=float(info.residual_interior.max()),
                       residual_interface_max=float(info.residual_interface.max()))
        rows.append(row)
        logger.info("n=%d batch %d %s K=%s: %.3f s (%s)", n, batch, kind, K, best, ", ".join(f"{t:.3f}" for t in ts))
    glob = [r["time_s"] for r in rows if r["case"] == "global"]
    ref = next(r["time_s"] for r in rows if r["case"] == "reference")
    for r in rows:
        if r["case"] == "patch":
            r["speedup_vs_global_fwd_bwd"] = (sum(glob) / 2) / r["time_s"]
            r["speedup_vs_reference_forward"] = ref / r["time_s"]
            r["global_time_s_bracket"] = glob
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[100, 317])
    ap.add_argument("--K", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--large", type=int, default=50000, help="from this many DOFs: no warm-up, one timed call")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    results = []
    for side in args.sides:
        results += run_side(side, args.K, args.batch, args.repeat, args.large)
    path = write("patch", dict(
        benchmark="patch mode forward+backward vs one global FEM solve of the same problem",
        problem="-div((1+u^2) grad u) = f, zero Dirichlet, MeshTri.init_tensor side x side, P1",
        batch=args.batch, loss="mean(u^2)",
        settings=dict(patch="PatchConstraint defaults (Newton rtol=atol=1e-10, linear_solver auto)",
                      global_fwd_bwd="femoe.layers.nonlinear_solve defaults, gradient to f",
                      reference="femoe.reference.solve per sample, forward only"),
        timing=f"one process per run; warm-up + {args.repeat} calls, fastest (from {args.large} DOFs: one call, "
               "no warm-up); order global, patch K..., global, "
               "reference; speed-up vs global uses the mean of the two global times",
        wall_seconds=time.perf_counter() - t0, results=results))
    logger.info("wrote %s (%.0f s)", path, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
