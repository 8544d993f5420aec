"""Patch mode's space-time Newton with its two direct solvers, one SuperLU of the whole system
against the level blocks one by one (``"block_bidiagonal"``), on diffusion-sorption (issue 11).

    OMP_NUM_THREADS=1 python benchmarks/bench_block_bidiagonal.py [--sizes 64x25 128x51 256x51 1024x101]
        [--batch 4] [--repeat 3]

At each size (cells x saved levels; the space-time system has about cells x (levels - 1)
unknowns per sample): a ``PatchConstraint`` (4 slab experts, the library's Newton settings) on a
batch of reference trajectories perturbed by 1 % noise, forward and backward (the gradient of
``sum(u * weights)`` with respect to the network's field), once with ``linear_solver="superlu"``
and once with ``"block_bidiagonal"``, alternating, each timed ``--repeat`` times after a warm-up
(median). The two must give the same field and gradient to round-off (max differences recorded)
and the same Newton iterations. The ratio superlu / blocks is what ``BLOCK_SOLVE_MIN`` in
``femoe/experts/_patch.py`` is set from.

Writes ``benchmarks/results/block_bidiagonal.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import alternating, command_line, load, write  # noqa: E402


def main() -> None:
    import numpy as np
    import torch

    from femoe.experts import PatchConstraint
    from femoe.problems import get_problem

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["64x25", "128x51", "256x51", "1024x101"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"command": command_line("bench_block_bidiagonal.py"), "load_at_start": load(), "sizes": {}}
    spec = get_problem("diffusion_sorption_1d")
    for size in args.sizes:
        cells, saved = (int(v) for v in size.split("x"))
        pb = spec.build(n_cells=cells, n_saved=saved)
        rng = np.random.default_rng(0)
        samples = spec.sample_inputs(rng, args.batch, pb)
        times, U = spec.reference_batch(pb, samples)
        U = torch.as_tensor(U)
        dt = float(times[1] - times[0])
        U_hat = (U * (1 + 0.01 * torch.randn(U.shape, dtype=U.dtype, generator=torch.Generator().manual_seed(1))))
        u0 = U[:, 0]
        weights = torch.rand(U.shape, dtype=U.dtype, generator=torch.Generator().manual_seed(2))
        layers = {name: PatchConstraint(pb, 4, partition="slab", dt=dt, linear_solver=name)
                  for name in ("superlu", "block_bidiagonal")}

        def run(layer):
            x = U_hat.clone().requires_grad_(True)
            u, info = layer(x, None, u0)
            (g,) = torch.autograd.grad((u * weights).sum(), x)
            return u.detach(), g, info

        results = {name: run(layer) for name, layer in layers.items()}  # warm-up: patterns, caches
        secs = alternating({name: (lambda layer=layer: run(layer)) for name, layer in layers.items()}, args.repeat,
                           warmup=0)
        (ua, ga, ia), (ub, gb, ib) = results["superlu"], results["block_bidiagonal"]
        med = {name: statistics.median(v) for name, v in secs.items()}
        row = {"cells": cells, "levels": saved, "unknowns_per_sample": int(layers["superlu"].interior.size) * (saved - 1),
               "batch": args.batch, "seconds_forward_backward": med, "all_seconds": secs,
               "superlu_over_blocks": med["superlu"] / med["block_bidiagonal"],
               "newton_iterations": {"superlu": ia.iterations.tolist(), "block_bidiagonal": ib.iterations.tolist()},
               "max_field_difference": float((ua - ub).abs().max()),
               "max_gradient_difference_relative": float((ga - gb).abs().max() / ga.abs().max()),
               "load": load()}
        out["sizes"][size] = row
        print(size, {k: row[k] for k in ("unknowns_per_sample", "seconds_forward_backward", "superlu_over_blocks",
                                         "max_field_difference", "max_gradient_difference_relative")}, flush=True)
    out["load_at_end"] = load()
    print("wrote", write("block_bidiagonal", out))


if __name__ == "__main__":
    main()
