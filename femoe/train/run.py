"""``femoe run``: train every method of a config, evaluate on the test split, report.

Each method trains in its own process (spawned), so its peak memory is its own and one
method's failure does not take the others with it. Writes ``results/<name>/``:
``metrics.json``, ``comparison.png``, ``training.png``, ``sample.png``, predictions as VTU
(steady) or XDMF (time-dependent), and per method ``<method>/checkpoint.pt`` and ``log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import resource
import time
from typing import Any

import numpy as np
import torch

from femoe.train.config import Config, config_from_dict

log = logging.getLogger(__name__)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def evaluate(task, method, batch_size: int = 4, train_until: float | None = None) -> dict[str, Any]:
    """Metrics of a trained method on the test split (and its predictions)."""
    method.eval()
    split = task.test
    errs, ress, jumps, times, preds, extrap, spans = [], [], [], [], [], [], []
    n_levels_train = None
    if task.time_dependent and train_until is not None:
        n_levels_train = int(np.searchsorted(task.times, train_until, side="right"))
    for start in range(0, split.inputs.shape[0], batch_size):
        dev = next(method.parameters()).device
        inp = split.inputs[start:start + batch_size].to(dev)
        ref = split.solutions[start:start + batch_size].double().to(dev)
        t0 = time.perf_counter()
        u, info = method(inp)
        times.append(time.perf_counter() - t0)
        params, u0 = task.layer_args(inp)
        errs.append(task.relative_l2(u, ref))
        if getattr(method, "basis_mode", False):  # basis too poor, or rows picking a poor member?
            spans.append(method.best_in_span(inp, ref))
        if n_levels_train is not None and n_levels_train < u.shape[1]:
            errs_after = task.relative_l2(u[:, n_levels_train:].contiguous(), ref[:, n_levels_train:].contiguous())
            extrap.append(errs_after)
        r = task.residual(u, params, u0)
        ress.append(torch.sqrt(r.square().mean(1)))
        if "interface_jump" in info:
            jumps.append(info["interface_jump"])
        preds.append(u)
    err = torch.cat(errs)
    out = {
        "rel_l2_mean": float(err.mean()), "rel_l2_std": float(err.std()) if err.numel() > 1 else 0.0,
        "rel_l2": err.tolist(),
        "residual_rms": float(torch.cat(ress).mean()),
        "inference_s_per_batch": float(np.median(times)),
        "interface_jump": float(max(jumps)) if jumps else None,
    }
    if spans:
        e = torch.cat(spans)
        out["best_in_span_mean"] = float(e.mean())
        out["best_in_span_std"] = float(e.std()) if e.numel() > 1 else 0.0
        out["best_in_span"] = e.tolist()
    if extrap:
        e = torch.cat(extrap)
        out["rel_l2_after_train_until_mean"] = float(e.mean())
        out["rel_l2_after_train_until_std"] = float(e.std()) if e.numel() > 1 else 0.0
    out["_predictions"] = torch.cat(preds)[:2].cpu().numpy()
    return out


def train_and_evaluate(cfg_dict: dict, method_name: str, resume: bool = False, progress: bool = True) -> dict:
    """Train one method and evaluate it (run in a child process by :func:`run`)."""
    from femoe.train.task import Task
    from femoe.train.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    task = Task(cfg)
    rss0 = _rss_mb()
    trainer = Trainer(cfg, method_name, task)
    if resume:
        trainer.resume()
    t0 = time.perf_counter()
    trainer.fit(progress=progress)
    train_s = time.perf_counter() - t0
    metrics = evaluate(task, trainer.method, cfg.train.batch_size, cfg.train.train_until)
    steps = trainer.step_times
    metrics.update({
        "method": method_name,
        "train_seconds": train_s,
        "steps": trainer.step,
        "seconds_per_step": float(np.median(steps)) if steps else None,
        "peak_rss_mb": _rss_mb(),
        "peak_rss_over_start_mb": _rss_mb() - rss0,
        "parameters": sum(p.numel() for p in trainer.method.net.parameters()),
    })
    if cfg.data.test_params:
        metrics["test_mesh"] = evaluate_on_test_mesh(task, trainer.method, cfg.train.batch_size)
    return metrics


def evaluate_on_test_mesh(task, method, batch_size: int = 4) -> dict[str, Any]:
    """The trained network on the mesh of ``data.test_params`` (super-resolution): its own test
    data, constraint layer and experts rebuilt there (:meth:`Task.test_mesh_task`)."""
    from femoe.train.task import transfer_method

    fine = task.test_mesh_task()
    m = evaluate(fine, transfer_method(method, fine), batch_size)
    m.pop("_predictions")
    return {"params": dict(task.cfg.data.test_params), "n_dofs": fine.n, **m}


def _child(q, cfg_dict, method, resume, progress):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("skfem").setLevel(logging.WARNING)
    try:
        q.put(("ok", train_and_evaluate(cfg_dict, method, resume, progress)))
    except KeyboardInterrupt:
        q.put(("interrupted", None))
    except Exception as exc:  # reported by the parent, with the method's name
        import traceback

        q.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def run(cfg: Config, *, resume: bool = False, progress: bool = True, isolate: bool = True) -> dict[str, Any]:
    """Train and evaluate every method of ``cfg``; returns the metrics (also written to disk)."""
    from femoe.train.task import Task

    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    task = Task(cfg)  # generates the data once, before the children start
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for m in cfg.methods:
        log.info("== %s ==", m)
        if isolate:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(q, cfg.to_dict(), m, resume, progress))
            p.start()
            try:
                status, payload = q.get()
            except KeyboardInterrupt:
                p.join()
                raise
            p.join()
            if status == "ok":
                results[m] = payload
            elif status == "interrupted":
                raise KeyboardInterrupt
            else:
                errors[m] = payload
                log.error("method %s failed: %s", m, payload.splitlines()[0])
        else:
            results[m] = train_and_evaluate(cfg.to_dict(), m, resume, progress)
    preds = {m: r.pop("_predictions") for m, r in results.items()}
    summary = {"config": cfg.to_dict(), "problem": task.spec.name, "n_dofs": task.n,
               "levels": getattr(task, "n_levels", None), "methods": results, "errors": errors}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    from femoe.train.report import plots, table, write_predictions

    summary["table"] = table(results)
    try:
        plots(task, cfg, results, preds)
        write_predictions(task, cfg, preds)
    except Exception as exc:  # plots must not lose the metrics
        log.error("writing plots/predictions failed: %s", exc)
    return summary
