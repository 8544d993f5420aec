"""Where a PI-HC training step of ``ds_cpu`` goes, part by part (issue 11).

    OMP_NUM_THREADS=1 python benchmarks/bench_step_parts.py [--trained results/ds_cpu_s0] [--steps 10]

Three measurements, each a comparison made in this one run:

* **one trajectory linearisation** (``Problem.trajectory_residual_and_jacobians``) of the
  config's problem at batch x levels states: with the affine terms (diffusion, outflow) assembled
  once and evaluated as ``K u + r(0)`` (what the library does), and with every term evaluated from
  its integrand (a second problem probed with ``affine_parts`` saying no, as before 2026-12-08); the
  two must agree to round-off;
* **the jets a form reads**: the same linearisation with every term evaluated and linearised over
  the test and trial jets its integrand reads (what the library does since 2026-12-08: the
  sorption term reads neither gradient), and over every jet (a third problem, with the record of
  reads patched to every jet, as before); the two must agree to round-off;
* **the trajectory Hessian** of the implicit backward, ``d2/dU2 (r* . r)`` at the LM's solution:
  from the forms' second derivatives (``TrajectoryResidual.hessian_matrix``, since 2026-12-08)
  and by coloured Hessian-vector products through the assembly (``SteadyResidual.hessian_matrix``,
  as before); the two must agree to round-off;
* **the normal equations** of one Levenberg-Marquardt evaluation at that size: ``J^T J`` and
  ``J^T r`` (as ``J^T @ r`` and as ``r^T J``, the LM's form, which reads ``J`` along its rows) for
  ``J`` of the LM's shape (batch, rows, N), against the layer model's ``linearize``
  where the trajectory's linearisation is already made (``J = M B`` by the stacked sparse
  product, and the rows);
* **the LM iterations of consecutive training steps** from the trained network (each step updates
  it, as training does): per step its time and every sample's iterations, to show the slow tails.

Writes ``benchmarks/results/step_parts.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import alternating, command_line, load, timeit, training_step, write  # noqa: E402


def _max_difference(a, b) -> float:
    """The largest entry difference of two linearisations ``(R, P, Q)`` (``P``, ``Q`` BatchedCSR)."""
    return max(float((x.values if hasattr(x, "pattern") else x).sub(y.values if hasattr(y, "pattern") else y)
                     .abs().max()) for x, y in zip(a, b))


def main() -> None:
    import torch

    from femoe.layers._residuals import basis_field
    from femoe.train.config import load_config
    from femoe.train.task import Task
    from femoe.train.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "problems/configs/ds_cpu.toml"))
    ap.add_argument("--trained", default="results/ds_cpu_s0", help="run folder with pihc/checkpoint.pt")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"command": command_line("bench_step_parts.py"), "load_at_start": load()}

    cfg = load_config(args.config)
    tmp = tempfile.TemporaryDirectory()
    cfg.data.dir, cfg.results = str(Path(tmp.name) / "data"), str(Path(tmp.name) / "results")
    cfg.data.n_train, cfg.data.n_test, cfg.data.workers = 8, 1, 1
    task = Task(cfg)
    batch, L, n = cfg.train.batch_size, task.n_levels, task.n
    dt = float(task.times[1] - task.times[0])

    # 1. one trajectory linearisation, affine terms cached or not
    spec_params = dict(cfg.problem.params)
    from femoe.problems import get_problem

    cached = get_problem(cfg.problem.name).build(**spec_params)
    plain = get_problem(cfg.problem.name).build(**spec_params)
    U = torch.rand(batch, L, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cached.trajectory_residual_and_jacobians(U, dt)
    with mock.patch("femoe.problem._form.affine_parts", return_value=None):  # probed now: nothing affine
        plain.trajectory_residual_and_jacobians(U, dt)
    a = cached.trajectory_residual_and_jacobians(U, dt)
    b = plain.trajectory_residual_and_jacobians(U, dt)
    assert not plain._affine, "the cache was meant to be off on the second problem"
    diff = _max_difference(a, b)
    t_cached = timeit(lambda: cached.trajectory_residual_and_jacobians(U, dt), repeat=args.repeat)
    t_plain = timeit(lambda: plain.trajectory_residual_and_jacobians(U, dt), repeat=args.repeat)
    out["linearisation"] = {"states": [batch, L], "dofs": n, "affine_terms_cached": len(cached._affine),
                            "seconds_cached": t_cached, "seconds_from_integrands": t_plain,
                            "speedup": t_plain / t_cached, "max_abs_difference": diff}
    print("linearisation", out["linearisation"], flush=True)

    # 1b. the jets each form reads, against every jet (the two timed alternately)
    every = get_problem(cfg.problem.name).build(**spec_params)
    all_jets = mock.patch("femoe.assembly.form._jets_of", lambda tb, seen, side: tuple(range(tb.n_jets)))
    with all_jets:
        c = every.trajectory_residual_and_jacobians(U, dt)
    diff = _max_difference(a, c)

    def every_jet():
        with all_jets:
            return every.trajectory_residual_and_jacobians(U, dt)

    secs = alternating({"read": lambda: cached.trajectory_residual_and_jacobians(U, dt), "every": every_jet},
                       args.repeat, warmup=0)
    t_read, t_every = secs["read"], secs["every"]
    reads = {str(i): list(v[1:]) for i, v in enumerate(cached._tb.__dict__.get("_reads", {}).values())}
    out["jets_read"] = {"states": [batch, L], "reads_test_trial": reads,
                        "seconds_jets_read": statistics.median(t_read), "seconds_every_jet": statistics.median(t_every),
                        "speedup": statistics.median(t_every) / statistics.median(t_read),
                        "max_abs_difference": diff}
    print("jets read", out["jets_read"], flush=True)

    # 2. the normal equations at the LM's size, against J = M B
    tr = Trainer(cfg, "pihc", task)
    tr.method.load_network(Path(args.trained) / "pihc" / "checkpoint.pt")
    tr.method.train()
    inputs = task.train.inputs[:batch]
    with torch.no_grad():
        B = tr.method.network_output(inputs).contiguous()
        params, u0 = task.layer_args(inputs)
        model = tr.method.layer.model
        from femoe.layers._state import INITIAL

        p = {**params, INITIAL: u0}
        w = torch.zeros(batch, B.shape[-1], dtype=B.dtype)
        r, J = model.linearize(basis_field(B, w), B, p)
        out["normal_equations"] = {
            "J_shape": list(J.shape),
            "seconds_JtJ": timeit(lambda: J.transpose(1, 2) @ J, repeat=args.repeat),
            "seconds_Jtr": timeit(lambda: J.transpose(1, 2) @ r.unsqueeze(-1), repeat=args.repeat),
            # the same product as the LM forms it since 2026-12-08 (femoe.layers._lm._rows_times): r^T J
            "seconds_rTJ": timeit(lambda: r.unsqueeze(1) @ J, repeat=args.repeat),
            # the model's linearize where the trajectory's linearisation is already made (the LM's
            # backward and repeated fields find it): J = M B by the stacked sparse product, the rows
            "seconds_J_from_made_linearisation": timeit(lambda: model.linearize(basis_field(B, w + 1e-3), B, p),
                                                        repeat=args.repeat),
        }
    print("normal equations", out["normal_equations"], flush=True)

    # 2b. the backward's trajectory Hessian at the LM's solution: from the forms, and by coloured
    # Hessian-vector products through the assembly (the two timed alternately)
    from femoe.layers._residuals import SteadyResidual

    with torch.no_grad():
        U_star, _ = tr.method.layer(B, params, u0)  # the LM's solution B w*
        r_star = model.residual(U_star, p)
        Hf = model.hessian_matrix(U_star, p, r_star)
        Hv = SteadyResidual.hessian_matrix(model, U_star, p, r_star)
        secs = alternating({"forms": lambda: model.hessian_matrix(U_star, p, r_star),
                            "hvp": lambda: SteadyResidual.hessian_matrix(model, U_star, p, r_star)},
                           args.repeat, warmup=0)
        t_forms, t_hvp = secs["forms"], secs["hvp"]
    out["trajectory_hessian"] = {
        "states": [batch, L], "seconds_from_forms": statistics.median(t_forms),
        "seconds_hessian_vector_products": statistics.median(t_hvp),
        "speedup": statistics.median(t_hvp) / statistics.median(t_forms),
        "max_abs_difference": float((Hf.values - Hv.values).abs().max()),
        "max_abs_entry": float(Hv.values.abs().max())}
    print("trajectory hessian", out["trajectory_hessian"], flush=True)

    # 3. consecutive training steps: time and every sample's LM iterations
    step = training_step(tr, inputs, task.train.solutions[:batch])
    rows = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        li = tr.method.layer.last_info
        rows.append({"seconds": time.perf_counter() - t, "iterations": li.iterations.tolist(),
                     "relative_gradient": li.relative_gradient.tolist(), "converged": li.converged.tolist()})
    secs = [r["seconds"] for r in rows]
    out["steps"] = {"rows": rows, "median_seconds": statistics.median(secs), "mean_seconds": statistics.mean(secs)}
    print("steps", [(round(r["seconds"], 3), r["iterations"]) for r in rows], flush=True)
    out["load_at_end"] = load()
    print("wrote", write("step_parts", out))
    tmp.cleanup()


if __name__ == "__main__":
    main()
