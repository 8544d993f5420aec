"""Tables, plots and ParaView files of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def table(results: dict[str, dict[str, Any]]) -> str:
    """One line per method; ``span L2``: the best-in-span error of basis-mode methods (the best
    member of span(B) in the mass norm, see :meth:`PIHC.best_in_span`) beside the test error."""
    w = max([6, *map(len, results)])  # the method column fits the longest name
    head = (f"{'method':<{w}} {'rel L2 mean':>11} {'std':>8} {'span L2':>8} {'residual':>10} {'jump':>9} "
            f"{'s/step':>8} {'infer s':>8} {'peak MB':>8}")
    lines = [head, "-" * len(head)]
    for m, r in results.items():
        jump = "-" if r.get("interface_jump") is None else f"{r['interface_jump']:.2e}"
        sps = "-" if r.get("seconds_per_step") is None else f"{r['seconds_per_step']:.3f}"
        span = "-" if r.get("best_in_span_mean") is None else f"{100 * r['best_in_span_mean']:.2f}%"
        lines.append(f"{m:<{w}} {100 * r['rel_l2_mean']:>10.2f}% {100 * r['rel_l2_std']:>7.2f}% {span:>8} "
                     f"{r['residual_rms']:>10.2e} {jump:>9} {sps:>8} {r['inference_s_per_batch']:>8.3f} "
                     f"{r['peak_rss_mb']:>8.0f}")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots(task, cfg, results: dict, preds: dict) -> None:
    plt = _plt()
    out = cfg.run_dir
    methods = list(results)
    # comparison bar chart
    fig, ax = plt.subplots(figsize=(5, 3.2))
    means = [100 * results[m]["rel_l2_mean"] for m in methods]
    stds = [100 * results[m]["rel_l2_std"] for m in methods]
    ax.bar(methods, means, yerr=stds, color="tab:blue", capsize=4)
    ax.set_ylabel("relative L2 error [%]")
    ax.set_title(f"{task.spec.name}: test split")
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)
    plt.close(fig)
    # training curves
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for m in methods:
        log = out / m / "log.jsonl"
        if log.is_file():
            recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            ax.semilogy([r["step"] for r in recs], [r["loss"] for r in recs], label=m)
    ax.set_xlabel("step")
    ax.set_ylabel("physics loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=120)
    plt.close(fig)
    # one test sample: reference and errors
    ref = task.test.solutions[0].numpy()
    n = len(methods) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3))
    axes = np.atleast_1d(axes)
    dim = task.problem.mesh.dim()
    fields = [("reference", ref)] + [(f"|{m} - ref|", np.abs(preds[m][0] - ref)) for m in methods]
    for ax, (title, f) in zip(axes, fields):
        if task.time_dependent and dim == 1:
            x = task.problem.doflocs[0]
            order = np.argsort(x)
            im = ax.imshow(f[:, order].T, origin="lower", aspect="auto",
                           extent=[task.times[0], task.times[-1], x.min(), x.max()])
            ax.set_xlabel("t")
            ax.set_ylabel("x")
        else:
            g = f[-1] if task.time_dependent else f
            mesh = task.spec.output_mesh(task.problem)
            vals = next(iter(task.spec.output_fields(task.problem, g).values()))
            im = ax.tripcolor(mesh.p[0], mesh.p[1], mesh.t[:3].T, vals[: mesh.nvertices], shading="gouraud")
            ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(out / "sample.png", dpi=120)
    plt.close(fig)


def write_predictions(task, cfg, preds: dict) -> Path:
    from femoe.mesh import write_fields

    mesh = task.spec.output_mesh(task.problem)
    ref = task.test.solutions[0].numpy()
    fields = {f"reference_{k}": v for k, v in task.spec.output_fields(task.problem, ref).items()}
    for m, p in preds.items():
        fields.update({f"{m}_{k}": v for k, v in task.spec.output_fields(task.problem, p[0]).items()})
    if task.time_dependent:
        path = cfg.run_dir / "predictions.xdmf"
        write_fields(path, mesh, fields, times=task.times)
    else:
        path = cfg.run_dir / "predictions.vtu"
        write_fields(path, mesh, fields)
    return path
