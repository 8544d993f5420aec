"""Data-generation benchmarks for issue #3.

``python benchmarks/bench_generate.py [--workers W] [--skip-generate] [--skip-refinement] [--skip-spectral]
[--skip-batched] [--only-batched]``

Measures, and writes to ``benchmarks/results/bench_generate.json``:

1. wall time of ``femoe.data.generate`` for 100 diffusion-sorption trajectories (90 train + 10 test)
   and 10 Navier-Stokes trajectories (8 + 2), with ``--workers`` processes;
2. the diffusion-sorption time-step refinement study: largest relative L2 change of any saved
   level when the Crank-Nicolson substeps per saved interval double (16 -> 32 -> 64 -> 128), for
   constant initial values 0.02, 0.1 and 0.2;
3. the Navier-Stokes FEM reference against a 256 x 256 pseudo-spectral solution of the same
   initial condition (relative L2 per saved level, space-time), with the energy/enstrophy curves
   in ``benchmarks/results/ns_energy_enstrophy.png``;
4. (issue 11, key ``batched``) diffusion-sorption samples per second of the batched generator
   (all samples of a shard advanced by one batched Newton, ``march_batch``) against the
   one-at-a-time Newton of the previous generator (``march``, one sample after the other), in
   the same process, at the ``ds_cpu`` size (128 cells x 51 levels) and at the paper's size
   (1,024 cells x 101 levels); the largest difference between the two paths; and the time of
   ``femoe generate`` for 1,000 trajectories at 1,024 x 101 on 2 worker processes, extrapolated
   from a measured smaller count (said so in the JSON). The machine load (``os.getloadavg``) is
   recorded before and after each measurement: on a shared machine the absolute times are
   pessimistic, the ratios from the same run are what to compare.

   ``OMP_NUM_THREADS=1 python benchmarks/bench_generate.py --only-batched``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def bench_generate(workers: int) -> dict:
    from femoe.data import generate

    out = {}
    for name, n_train, n_test in (("diffusion_sorption_1d", 90, 10), ("navier_stokes_2d", 8, 2)):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            paths = generate(name, tmp, n_train, n_test, seed=0, workers=workers, progress=False)
            seconds = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in paths.values())
        out[name] = {"trajectories": n_train + n_test, "workers": workers, "seconds": round(seconds, 2),
                     "seconds_per_trajectory": round(seconds / (n_train + n_test), 3),
                     "megabytes": round(size / 1e6, 1)}
        print(name, out[name], flush=True)
    return out


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_batched(workers: int, n_seq_small: int = 8, n_batch_small: int = 127, n_seq_paper: int = 3,
                  n_batch_paper: int = 30, n_generate: int = 32) -> dict:
    """Batched vs one-at-a-time diffusion-sorption reference (see the module documentation)."""
    from femoe.data import generate
    from femoe.data.generate import sample_rng, shard_size
    from femoe.problems import get_problem
    from femoe.problems.diffusion_sorption_1d import march, march_batch

    spec = get_problem("diffusion_sorption_1d")
    sizes = {
        "ds_cpu_128x51": ({"n_cells": 128, "n_saved": 51, "substeps": 32, "theta": 1.0}, n_seq_small, n_batch_small),
        "paper_1024x101": ({}, n_seq_paper, n_batch_paper),
    }
    out: dict = {"note": "solver only, one process, OMP_NUM_THREADS=1; 'one_at_a_time' is march() per sample "
                         "(the previous generator's path), 'batched' is march_batch() on shards of the default "
                         "size (femoe.data.generate.shard_size); samples are the generator's own (seed 0, train)"}
    for key, (params, n_seq, n_bat) in sizes.items():
        problem = spec.build(**params)
        X = np.stack([spec.sample_inputs(sample_rng(0, "train", i), 1, problem)[0] for i in range(max(n_seq, n_bat))])
        size = shard_size(spec, problem)
        row = {"params": spec.parameters(**params), "n_dofs": problem.n, "shard_size": size,
               "load_before": _load()}
        t0 = time.perf_counter()
        seq = [march(problem, x)[1] for x in X[:n_seq]]
        t_seq = time.perf_counter() - t0
        row["load_mid"] = _load()
        t0 = time.perf_counter()
        for x in X[:n_seq]:  # the batched code on shards of one sample (what spec.reference runs)
            march_batch(problem, x[None])
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        bat = [march_batch(problem, X[k:k + size])[1] for k in range(0, n_bat, size)]
        t_bat = time.perf_counter() - t0
        row["load_after"] = _load()
        bat = np.concatenate(bat)
        row["one_at_a_time"] = {"samples": n_seq, "seconds": round(t_seq, 2),
                                "samples_per_second": round(n_seq / t_seq, 3)}
        row["batched_code_one_sample_per_shard"] = {"samples": n_seq, "seconds": round(t_one, 2),
                                                     "samples_per_second": round(n_seq / t_one, 3)}
        row["batched"] = {"samples": n_bat, "seconds": round(t_bat, 2), "samples_per_second": round(n_bat / t_bat, 3),
                          "newton_max_per_step_last_shard": max(problem.last_reference_info["newton_max_per_step"])}
        row["speedup_batched_vs_one_at_a_time"] = round((n_bat / t_bat) / (n_seq / t_seq), 2)
        row["max_abs_diff_batched_vs_one_at_a_time"] = float(max(np.abs(bat[k] - seq[k]).max() for k in range(n_seq)))
        row["speedup_batched_vs_batched_code_one_sample"] = round((n_bat / t_bat) / (n_seq / t_one), 2)
        out[key] = row
        print(key, row, flush=True)

    out["pool_paper_size"] = bench_pool(workers)

    # femoe generate at the paper's size on `workers` processes, extrapolated to 1,000 trajectories
    n_test = 2
    with tempfile.TemporaryDirectory() as tmp:
        load0 = _load()
        t0 = time.perf_counter()
        paths = generate("diffusion_sorption_1d", tmp, n_generate - n_test, n_test, seed=0, workers=workers,
                         progress=False)
        seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in paths.values())
    out["generate_paper_size"] = {
        "trajectories_measured": n_generate, "workers": workers, "seconds_measured": round(seconds, 1),
        "seconds_per_trajectory": round(seconds / n_generate, 3), "megabytes": round(size / 1e6, 1),
        "estimate_1000_trajectories_hours": round(1000 * seconds / n_generate / 3600, 2),
        "estimate_is": f"extrapolated linearly from the {n_generate} trajectories measured (not a 1,000-trajectory run)",
        "load_before": load0, "load_after": _load()}
    print("generate", out["generate_paper_size"], flush=True)
    return out


_POOL: dict = {}


def _pool_init() -> None:
    from femoe.problems import get_problem

    _POOL["problem"] = get_problem("diffusion_sorption_1d").build()


def _pool_ready(_: int = 0) -> int:
    return _POOL["problem"].n


def _pool_march(x: np.ndarray) -> float:
    from femoe.problems.diffusion_sorption_1d import march

    return float(march(_POOL["problem"], x)[1][-1, -1])


def _pool_march_batch(X: np.ndarray) -> float:
    from femoe.problems.diffusion_sorption_1d import march_batch

    return float(march_batch(_POOL["problem"], X)[1][:, -1, -1].sum())


def bench_pool(workers: int, n: int = 16) -> dict:
    """``n`` trajectories at 1,024 x 101 on a pool of ``workers`` processes, one at a time
    (``march`` per task, the previous generator) vs shards (``march_batch``), same run; the pools
    are started and warmed up before the clock starts."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from femoe.data.generate import _shards, sample_rng, shard_size
    from femoe.problems import get_problem

    spec = get_problem("diffusion_sorption_1d")
    problem = spec.build()
    X = np.stack([spec.sample_inputs(sample_rng(0, "train", i), 1, problem)[0] for i in range(n)])
    shards = _shards(list(range(n)), shard_size(spec, problem), workers)
    out = {"trajectories": n, "workers": workers, "shards": [len(s) for s in shards], "load_before": _load()}
    for key, fn, tasks in (("one_at_a_time", _pool_march, list(X)),
                           ("batched", _pool_march_batch, [X[s] for s in shards])):
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_pool_init) as pool:
            list(pool.map(_pool_ready, range(workers)))
            t0 = time.perf_counter()
            list(pool.map(fn, tasks))
            seconds = time.perf_counter() - t0
        out[key] = {"seconds": round(seconds, 1), "samples_per_second": round(n / seconds, 3)}
        out[f"load_after_{key}"] = _load()
        print("pool", key, out[key], flush=True)
    out["speedup_batched_vs_one_at_a_time"] = round(out["one_at_a_time"]["seconds"] / out["batched"]["seconds"], 2)
    return out


def bench_refinement() -> dict:
    from femoe.problems import get_problem
    from femoe.problems.diffusion_sorption_1d import march

    spec = get_problem("diffusion_sorption_1d")
    problem = spec.build()
    table = {}
    for u0 in (0.02, 0.1, 0.2):
        prev = None
        rows = []
        for m in (16, 32, 64, 128):
            t0 = time.perf_counter()
            _, U = march(problem, np.full(problem.n, u0), substeps=m)
            seconds = time.perf_counter() - t0
            row = {"substeps": m, "steps": problem.last_reference_info["steps"], "seconds": round(seconds, 2)}
            if prev is not None:
                change = np.linalg.norm(U - prev, axis=1)[1:] / np.linalg.norm(U, axis=1)[1:]
                row["max_level_rel_change_vs_half"] = float(change.max())
                row["worst_level_time"] = float(5.0 * (1 + change.argmax()))
                row["space_time_rel_change_vs_half"] = float(np.linalg.norm(U - prev) / np.linalg.norm(U))
            rows.append(row)
            prev = U
        table[str(u0)] = rows
        print("refinement u0 =", u0, rows, flush=True)
    return table


def bench_spectral() -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ns_spectral import compare_with_fem

    r = compare_with_fem(seed=0, N=256, substeps=16)
    t = np.array(r["times"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(t, r["energy_fem"], label="FEM P1 (periodic_square.msh)")
    axes[0].plot(t, r["energy_spectral"], "--", label="spectral 256^2")
    axes[0].set_title("kinetic energy")
    axes[1].plot(t, r["enstrophy_fem"], label="FEM")
    axes[1].plot(t, r["enstrophy_spectral"], "--", label="spectral")
    axes[1].set_title("enstrophy")
    axes[2].plot(t, r["rel_l2_per_level"])
    axes[2].set_title("relative L2 difference of vorticity, FEM vs spectral")
    for ax in axes:
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ns_energy_enstrophy.png", dpi=110)
    plt.close(fig)
    summary = {k: v for k, v in r.items() if not isinstance(v, list)}
    summary["rel_l2_at"] = {f"t={t[i]:g}": r["rel_l2_per_level"][i] for i in (0, 16, 32, 48, 64)}
    summary["energy_decay_fem"] = r["energy_fem"][-1] / r["energy_fem"][0]
    summary["energy_decay_spectral"] = r["energy_spectral"][-1] / r["energy_spectral"][0]
    summary["enstrophy_decay_fem"] = r["enstrophy_fem"][-1] / r["enstrophy_fem"][0]
    summary["enstrophy_decay_spectral"] = r["enstrophy_spectral"][-1] / r["enstrophy_spectral"][0]
    print("spectral", summary, flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--skip-refinement", action="store_true")
    parser.add_argument("--skip-spectral", action="store_true")
    parser.add_argument("--skip-batched", action="store_true")
    parser.add_argument("--only-batched", action="store_true", help="only the batched-generation benchmark")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_generate.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if args.only_batched:
        args.skip_refinement = args.skip_spectral = args.skip_generate = True
    if not args.skip_batched:
        result["batched"] = bench_batched(args.workers)
        result["batched"]["command"] = "OMP_NUM_THREADS=1 python benchmarks/bench_generate.py --only-batched"
        path.write_text(json.dumps(result, indent=1))
    if not args.skip_refinement:
        result["ds_refinement"] = bench_refinement()
    if not args.skip_spectral:
        result["ns_fem_vs_spectral"] = bench_spectral()
    if not args.skip_generate:
        result["generate"] = bench_generate(args.workers)
    path.write_text(json.dumps(result, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
